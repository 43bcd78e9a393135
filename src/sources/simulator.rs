//! The built-in simulator: realistic vitals for N devices (one patient each), seeded and
//! reproducible, in the message shapes of `templates/` (bedside monitors: `bedside-monitor`;
//! wearables: `basic`).
//!
//! Each device has its own random stream (seeded from the seed and the device index), so a
//! device's messages are the same whichever worker or process simulates it. Optional
//! disorder mimics real wards: swapped readings, devices that drop out, devices that were
//! offline and sync a backlog at once (late data), and sensor artifacts.

use super::{Origin, Poll, Positions, RawMessage, Source};
use crate::config::SimulatorConfig;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Device profiles the simulator knows.
pub use crate::config::SIMULATOR_PROFILES as PROFILES;

/// One simulated message.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMessage {
    /// Device id (the Kafka key).
    pub key: String,
    /// Device JSON.
    pub payload: Vec<u8>,
    /// When the reading was taken.
    pub event_time: DateTime<Utc>,
}

struct Device {
    index: u32,
    rng: Xoshiro256PlusPlus,
    hr: f64,
    spo2: f64,
    rr: f64,
    sbp: f64,
    dbp: f64,
    temp: f64,
    /// Slowly deteriorating patient (rising HR and RR, falling SpO2): what alerts should catch.
    deteriorating: bool,
    /// Acute desaturation 30 s in (SpO2 to about 84 %, heart rate up): the demo's alert.
    acute: bool,
    on_oxygen: bool,
    silent_until: u64,
    offline_until: u64,
    backlog: Vec<SimMessage>,
    held: Option<SimMessage>,
    seq: u64,
}

/// When acute devices start to desaturate (seconds of simulated time).
const ACUTE_AFTER_S: u64 = 30;

/// When the first PCD-01 monitors get a software update (seconds of simulated time).
const SOFTWARE_UPDATE_AFTER_S: u64 = 120;

/// When the first PCD-01 monitors' NIBP channels are calibrated (seconds of simulated time).
const CALIBRATION_AFTER_S: u64 = 150;

/// When every fifth PCD-01 monitor's SpO2 sensor goes off, for a minute (simulated time).
const SENSOR_OFF_AFTER_S: u64 = 200;

/// The PCD-01 VMD headers by module ordinal: SpO2, ECG, blood pressure, temperature.
const VMD_HEADERS: &[(u32, &str)] = &[
    (1, "69642^MDC_DEV_ANALY_SAT_O2_VMD^MDC"),
    (2, "69798^MDC_DEV_ECG_VMD^MDC"),
    (4, "69854^MDC_DEV_METER_PRESS_BLD_VMD^MDC"),
    (5, "69902^MDC_DEV_METER_TEMP_VMD^MDC"),
];

/// Mean-reverting random walk step.
fn walk(rng: &mut Xoshiro256PlusPlus, v: f64, mean: f64, pull: f64, noise: f64) -> f64 {
    v + (mean - v) * pull + (rng.random::<f64>() - 0.5) * 2.0 * noise
}

impl Device {
    fn new(seed: u64, index: u32, acute: bool) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let deteriorating = rng.random::<f64>() < 0.05;
        Self {
            index,
            hr: rng.random_range(58.0..92.0),
            spo2: rng.random_range(94.0..99.5),
            rr: rng.random_range(12.0..19.0),
            sbp: rng.random_range(104.0..138.0),
            dbp: rng.random_range(62.0..86.0),
            temp: rng.random_range(36.3..37.3),
            deteriorating,
            acute,
            on_oxygen: rng.random::<f64>() < 0.15,
            silent_until: 0,
            offline_until: 0,
            backlog: Vec::new(),
            held: None,
            seq: 0,
            rng,
        }
    }

    fn id(&self, profile: &str) -> (String, String, String) {
        match profile {
            "wearable" => (
                format!("wearable-{:04}", self.index),
                format!("patient-{:04}", self.index),
                String::new(),
            ),
            // An EUI-64 in a vendor's range, as PCD-01 gateways put in OBX-18.
            "ihe-pcd01" => (
                format!("0012A3FFFE{:06X}", self.index),
                format!("P-{:04}", self.index),
                format!("E-{:04}", self.index),
            ),
            _ => (
                format!("BM-{:04}", self.index),
                format!("P-{:04}", self.index),
                format!("E-{:04}", self.index),
            ),
        }
    }

    fn step(&mut self, second: u64) {
        let drift = if self.deteriorating {
            second as f64 / 3600.0
        } else {
            0.0
        };
        let r = &mut self.rng;
        if self.acute && second >= ACUTE_AFTER_S {
            // Falls a point or two a second: fast, but no probe-off jump to the quality check.
            self.hr = walk(r, self.hr, 118.0, 0.08, 1.0);
            self.spo2 = walk(r, self.spo2, 84.0, 0.12, 0.3).min(100.0);
            self.rr = walk(r, self.rr, 26.0, 0.08, 0.4);
            return;
        }
        self.hr = walk(r, self.hr, 75.0 + 40.0 * drift.min(1.0), 0.02, 1.5);
        self.spo2 = walk(r, self.spo2, 97.0 - 8.0 * drift.min(1.0), 0.05, 0.4).min(100.0);
        self.rr = walk(r, self.rr, 15.0 + 10.0 * drift.min(1.0), 0.03, 0.5);
        self.sbp = walk(r, self.sbp, 120.0 - 20.0 * drift.min(1.0), 0.01, 1.0);
        self.dbp = walk(r, self.dbp, 75.0, 0.01, 0.8);
        self.temp = walk(r, self.temp, 36.9 + 1.2 * drift.min(1.0), 0.01, 0.02);
    }

    fn message(
        &mut self,
        profile: &str,
        t: DateTime<Utc>,
        second: u64,
        artifacts: f64,
    ) -> SimMessage {
        self.seq += 1;
        let (device, patient, encounter) = self.id(profile);
        let ts = crate::time::format_rfc3339(&t);
        if profile == "ihe-pcd01" {
            let payload = self.pcd01(&device, &patient, &encounter, t, second, artifacts);
            return SimMessage {
                key: device,
                payload: payload.into_bytes(),
                event_time: t,
            };
        }
        let value = if profile == "wearable" {
            let steps = if self.rng.random::<f64>() < 0.3 {
                self.rng.random_range(0..25)
            } else {
                0
            };
            json!({
                "heartRate": format!("{}", self.hr.round()),
                "steps": format!("{steps}"),
                "endDate": ts,
                "deviceId": device,
                "patientId": patient,
            })
        } else {
            let artifact = self.rng.random::<f64>() < artifacts;
            let (spo2, pleth) = if artifact {
                (self.rng.random_range(0..45) as f64, "poor")
            } else {
                (self.spo2.round(), "good")
            };
            let mut v = json!({
                "deviceId": device,
                "patientId": patient,
                "encounterId": encounter,
                "timestamp": ts,
                "sequence": self.seq,
                "model": "VitalView 9",
                "firmware": "4.2.1",
                "heartRate": self.hr.round() as i64,
                "spo2": spo2 as i64,
                "respiratoryRate": self.rr.round() as i64,
                "signalQuality": {"ecg": "good", "pleth": pleth},
            });
            // The cuff inflates every 5 minutes, the thermometer reads every minute.
            if second % 300 == 0 {
                v["nibp"] = json!({
                    "systolic": self.sbp.round() as i64,
                    "diastolic": self.dbp.round() as i64,
                    "mean": ((self.sbp + 2.0 * self.dbp) / 3.0).round() as i64,
                });
            }
            // Temperature, oxygen and consciousness (ACVPU) are charted once a minute.
            if second % 60 == 0 {
                v["temperature"] = json!((self.temp * 10.0).round() / 10.0);
                v["onOxygen"] = json!(if self.on_oxygen { "True" } else { "False" });
                v["acvpu"] = json!("A");
            }
            v
        };
        SimMessage {
            key: device,
            payload: serde_json::to_vec(&value).expect("JSON"),
            event_time: t,
        }
    }
}

impl Device {
    /// This second's reading as an IHE PCD-01 `ORU^R01` (segments ended by CR): the same
    /// vitals, cadence and artifacts as the bedside monitor's JSON.
    fn pcd01(
        &mut self,
        device: &str,
        patient: &str,
        encounter: &str,
        t: DateTime<Utc>,
        second: u64,
        artifacts: f64,
    ) -> String {
        let ts = t.format("%Y%m%d%H%M%S%.3f+0000").to_string();
        let spo2 = if self.rng.random::<f64>() < artifacts {
            self.rng.random_range(0..45) as f64
        } else {
            self.spo2.round()
        };
        let mut obx: Vec<(&str, &str, String, &str)> = vec![
            (
                "150456^MDC_PULS_OXIM_SAT_O2^MDC",
                "1.1.1.1",
                format!("{spo2}"),
                "262688^MDC_DIM_PERCENT^MDC",
            ),
            (
                "147842^MDC_ECG_HEART_RATE^MDC",
                "1.2.1.1",
                format!("{}", self.hr.round()),
                "264864^MDC_DIM_BEAT_PER_MIN^MDC",
            ),
            (
                "151562^MDC_RESP_RATE^MDC",
                "1.3.1.1",
                format!("{}", self.rr.round()),
                "264928^MDC_DIM_RESP_PER_MIN^MDC",
            ),
        ];
        if second % 300 == 0 {
            let mean = ((self.sbp + 2.0 * self.dbp) / 3.0).round();
            obx.push((
                "150021^MDC_PRESS_BLD_NONINV_SYS^MDC",
                "1.4.1.1",
                format!("{}", self.sbp.round()),
                "266016^MDC_DIM_MMHG^MDC",
            ));
            obx.push((
                "150022^MDC_PRESS_BLD_NONINV_DIA^MDC",
                "1.4.1.2",
                format!("{}", self.dbp.round()),
                "266016^MDC_DIM_MMHG^MDC",
            ));
            obx.push((
                "150023^MDC_PRESS_BLD_NONINV_MEAN^MDC",
                "1.4.1.3",
                format!("{mean}"),
                "266016^MDC_DIM_MMHG^MDC",
            ));
        }
        if second % 60 == 0 {
            let temp = (self.temp * 10.0).round() / 10.0;
            obx.push((
                "150364^MDC_TEMP_BODY^MDC",
                "1.5.1.1",
                format!("{temp}"),
                "268192^MDC_DIM_DEGC^MDC",
            ));
        }
        // The MDS and its identification rows, as monitors send them with every report; the
        // software version changes once mid-run on every third monitor.
        let software = if self.index % 3 == 0 && second >= self.software_update_at() {
            "2.5.0"
        } else {
            "2.4.1"
        };
        let mut m = format!(
            "MSH|^~\\&|VITALVIEW^{device}^EUI-64|SIM|VITALFLOW|HOSP|{ts}||ORU^R01^ORU_R01|SIM-{}-{}|P|2.6|||NE|AL\r\
             PID|||{patient}^^^HOSP^MR\r\
             PV1||I|WARD^{bed}^A||||||||||||||||{encounter}^^^HOSP^VN\r\
             OBR|1|||182777000^monitoring of patient^SCT|||{ts}\r\
             OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{device}^EUI-64\r\
             OBX|2|ST|531970^MDC_ID_MODEL_MANUFACTURER^MDC|1.0.0.1|VitalFlow Simulated Devices||||||R\r\
             OBX|3|ST|531969^MDC_ID_MODEL_NUMBER^MDC|1.0.0.2|VV-5||||||R\r\
             OBX|4|ST|531972^MDC_ID_PROD_SPEC_SERIAL^MDC|1.0.0.3|SIM{:06}||||||R\r\
             OBX|5|ST|531975^MDC_ID_PROD_SPEC_SW^MDC|1.0.0.4|{software}||||||R\r",
            self.index,
            self.seq,
            self.index,
            bed = self.index + 1,
        );
        let mut n = 5;
        let mut row = |m: &mut String, text: String| {
            n += 1;
            m.push_str(&format!("OBX|{n}|{text}\r"));
        };
        let mut vmd = 0;
        for (code, sub, value, unit) in &obx {
            // Module headers (VMD, and the NIBP channel) before a module's first metric.
            let module = sub.split('.').nth(1).unwrap_or("");
            if module != vmd.to_string() {
                vmd = module.parse().unwrap_or(0);
                if let Some(header) = VMD_HEADERS.iter().find(|(v, _)| *v == vmd) {
                    row(&mut m, format!("|{}|1.{vmd}.0.0|||||||X", header.1));
                }
                if vmd == 4 {
                    row(
                        &mut m,
                        "|70687^MDC_DEV_PRESS_BLD_NONINV_CHAN^MDC|1.4.1.0|||||||X".to_string(),
                    );
                }
            }
            if *sub == "1.1.1.1" {
                // Every fifth monitor's SpO2 sensor is off for a minute mid-run: the metric
                // comes without a value (result status X) and its status says why.
                let off = self.index % 5 == 2
                    && (SENSOR_OFF_AFTER_S..SENSOR_OFF_AFTER_S + 60).contains(&second);
                if off {
                    row(&mut m, format!("NM|{code}|{sub}||{unit}|||||X|||{ts}"));
                } else {
                    row(
                        &mut m,
                        format!("NM|{code}|{sub}|{value}|{unit}|||||R|||{ts}"),
                    );
                }
                let status = if off {
                    "metric-transduc-discon"
                } else {
                    "operating"
                };
                row(
                    &mut m,
                    format!("CWE|67904^MDC_ATTR_METRIC_STAT^MDC|1.1.1.1.1|{status}||||||R"),
                );
                continue;
            }
            row(
                &mut m,
                format!("NM|{code}|{sub}|{value}|{unit}|||||R|||{ts}"),
            );
            if *sub == "1.4.1.1" {
                // The NIBP channel's calibration: once before the run, again mid-run on every
                // third monitor (one in three, offset from the software updates).
                let start = t - chrono::Duration::seconds(second as i64);
                let at = if self.index % 3 == 1 && second >= self.calibration_at() {
                    start + chrono::Duration::seconds(self.calibration_at() as i64)
                } else {
                    start - chrono::Duration::days(20)
                };
                row(
                    &mut m,
                    format!(
                        "CWE|67898^MDC_ATTR_METRIC_CALIB^MDC|1.4.1.1.1|calibrated~offset||||||R|||{}",
                        at.format("%Y%m%d%H%M%S+0000")
                    ),
                );
            }
        }
        m
    }

    /// When this monitor's software is updated (seconds of simulated time).
    fn software_update_at(&self) -> u64 {
        SOFTWARE_UPDATE_AFTER_S + 15 * u64::from(self.index % 8)
    }

    /// When this monitor's NIBP channel is calibrated (seconds of simulated time).
    fn calibration_at(&self) -> u64 {
        CALIBRATION_AFTER_S + 15 * u64::from(self.index % 8)
    }
}

/// Generates the messages of a subset of devices, second by second of simulated time.
pub struct Simulator {
    cfg: SimulatorConfig,
    start: DateTime<Utc>,
    devices: Vec<Device>,
    second: u64,
    cursor: usize,
    ready: VecDeque<SimMessage>,
    limit: Option<u64>,
    produced: u64,
}

impl Simulator {
    /// Simulates devices `d` with `d % share.1 == share.0`, starting at `start` (event time).
    pub fn new(cfg: &SimulatorConfig, start: DateTime<Utc>, share: (usize, usize)) -> Self {
        let (me, of) = share;
        let devices = (0..cfg.devices)
            .filter(|d| *d as usize % of == me)
            .map(|d| Device::new(cfg.seed, d, d < cfg.acute))
            .collect::<Vec<_>>();
        let limit = cfg.count.map(|c| {
            let c = c as usize;
            (c / of + usize::from(me < c % of)) as u64
        });
        Self {
            cfg: cfg.clone(),
            start,
            devices,
            second: 0,
            cursor: 0,
            ready: VecDeque::new(),
            limit,
            produced: 0,
        }
    }

    /// Event time at which a simulation of `count` messages should start to end about now.
    pub fn default_start(cfg: &SimulatorConfig) -> DateTime<Utc> {
        let now = Utc::now();
        let seconds = cfg.count.map_or(0, |c| c / u64::from(cfg.devices.max(1)));
        now - ChronoDuration::seconds(seconds as i64 + 1)
    }

    /// Messages per second this generator should produce (its share of the rate).
    pub fn rate(&self) -> f64 {
        if self.cfg.devices == 0 {
            return 0.0;
        }
        self.cfg.rate * self.devices.len() as f64 / f64::from(self.cfg.devices)
    }

    fn burst_device(&self) -> Option<u32> {
        let every = self.cfg.late_burst?.as_secs().max(1);
        if self.second == 0 || self.second % every != 0 {
            return None;
        }
        let mut r = Xoshiro256PlusPlus::seed_from_u64(self.cfg.seed ^ self.second);
        Some(r.random_range(0..self.cfg.devices))
    }

    fn tick(&mut self) {
        let second = self.second;
        let t = self.start + ChronoDuration::seconds(second as i64);
        let i = self.cursor;
        if i == 0 {
            if let Some(d) = self.burst_device() {
                let every = self.cfg.late_burst.map_or(60, |b| b.as_secs().max(1));
                if let Some(dev) = self.devices.iter_mut().find(|x| x.index == d) {
                    // A device still offline stays so; one back online syncs its backlog
                    // before it goes offline again.
                    if second >= dev.offline_until {
                        self.ready.extend(dev.backlog.drain(..));
                        dev.offline_until = second + every;
                    }
                }
            }
        }
        let profile = self.cfg.profile.clone();
        let dev = &mut self.devices[i];
        dev.step(second);
        if self.cfg.dropout > 0.0
            && second >= dev.silent_until
            && dev.rng.random::<f64>() < self.cfg.dropout
        {
            dev.silent_until = second + dev.rng.random_range(10..60);
        }
        if second < dev.silent_until {
            return;
        }
        let msg = dev.message(&profile, t, second, self.cfg.artifacts);
        if second < dev.offline_until {
            dev.backlog.push(msg);
            return;
        }
        // Back online: the backlog syncs first, all at once.
        self.ready.extend(dev.backlog.drain(..));
        if let Some(h) = dev.held.take() {
            self.ready.push_back(msg);
            self.ready.push_back(h);
        } else if self.cfg.out_of_order > 0.0 && dev.rng.random::<f64>() < self.cfg.out_of_order {
            dev.held = Some(msg);
        } else {
            self.ready.push_back(msg);
        }
    }

    /// Flushes what devices hold back (end of a finite simulation).
    fn drain_held(&mut self) {
        for d in &mut self.devices {
            self.ready.extend(d.held.take());
            self.ready.extend(d.backlog.drain(..));
        }
    }
}

impl Iterator for Simulator {
    type Item = SimMessage;

    fn next(&mut self) -> Option<SimMessage> {
        if self.devices.is_empty() || self.limit.is_some_and(|l| self.produced >= l) {
            return None;
        }
        while self.ready.is_empty() {
            self.tick();
            self.cursor += 1;
            if self.cursor == self.devices.len() {
                self.cursor = 0;
                self.second += 1;
            }
            // A finite run must not end holding messages back.
            if self.second > 0
                && self.cursor == 0
                && self
                    .limit
                    .is_some_and(|l| self.produced + self.devices.len() as u64 >= l)
            {
                self.drain_held();
            }
        }
        self.produced += 1;
        self.ready.pop_front()
    }
}

/// Spaces messages out to a rate.
pub struct Pacer {
    rate: f64,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `rate` messages per second (0: no pacing).
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// How many messages may be sent now, at most `max`.
    pub fn allowance(&self, max: usize) -> usize {
        if self.rate <= 0.0 {
            return max;
        }
        let due = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
        (due.saturating_sub(self.sent) as usize).min(max)
    }

    /// Records messages sent.
    pub fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Time until the next message is due.
    pub fn until_next(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let next = (self.sent + 1) as f64 / self.rate;
        Duration::from_secs_f64(next).saturating_sub(self.started.elapsed())
    }
}

/// The shortest sleep of [`produce`] between sends.
const MIN_NAP: Duration = Duration::from_millis(1);

/// Produces simulated messages into a Kafka topic (key: device id) at the configured rate,
/// until the count is reached or `stop` is set. Returns the number of messages delivered.
pub fn produce(
    cfg: &SimulatorConfig,
    k: &crate::config::KafkaConfig,
    brokers: &str,
    topic: &str,
    start: DateTime<Utc>,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = crate::kafka::client_config(k, brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .with_context(|| format!("cannot create a Kafka producer for {brokers}"))?;
    let mut sim = Simulator::new(cfg, start, (0, 1));
    let mut pacer = Pacer::new(cfg.rate);
    let mut sent = 0u64;
    'outer: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let n = pacer.allowance(1000);
        if n == 0 {
            // Wakes at most once a millisecond and sends what is due then. Sleeping until
            // each next message woke the thread 5,000 times a second at 5,000 msgs/s: 13 %
            // of `vitalflow bench`'s CPU samples, most of it the kernel switching tasks.
            // Each message is stamped as it is produced, so no measured latency grows.
            let nap = pacer.until_next().clamp(MIN_NAP, Duration::from_millis(50));
            std::thread::sleep(nap);
            producer.poll(Duration::ZERO);
            continue;
        }
        for _ in 0..n {
            let Some(m) = sim.next() else { break 'outer };
            let record = BaseRecord::to(topic).key(&m.key).payload(&m.payload);
            crate::kafka::send(&producer, record)
                .map_err(|e| anyhow::anyhow!("cannot produce to {topic}: {e}"))?;
            sent += 1;
        }
        pacer.sent(n);
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .with_context(|| format!("simulated messages to {topic} not acknowledged"))?;
    Ok(sent)
}

/// The simulator as a worker's source (no Kafka in between).
pub struct SimulatorSource {
    sim: Simulator,
    pacer: Pacer,
    topic: Arc<str>,
    worker: i32,
    offset: i64,
    finished: bool,
}

impl SimulatorSource {
    /// This worker's share of the simulated devices.
    pub fn new(cfg: &SimulatorConfig, start: DateTime<Utc>, worker: usize, peers: usize) -> Self {
        let sim = Simulator::new(cfg, start, (worker, peers));
        let pacer = Pacer::new(sim.rate());
        Self {
            sim,
            pacer,
            topic: "simulator".into(),
            worker: worker as i32,
            offset: 0,
            finished: false,
        }
    }
}

impl Source for SimulatorSource {
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        let n = self.pacer.allowance(max);
        for _ in 0..n {
            let Some(m) = self.sim.next() else {
                self.finished = true;
                return Ok(Poll::Finished);
            };
            out.push(RawMessage {
                payload: m.payload,
                key: Some(m.key.into_bytes()),
                headers: Vec::new(),
                origin: Origin {
                    topic: self.topic.clone(),
                    partition: self.worker,
                    offset: self.offset,
                    timestamp_ms: Some(Utc::now().timestamp_millis()),
                },
            });
            self.offset += 1;
        }
        self.pacer.sent(n);
        Ok(if n == max { Poll::Ready } else { Poll::Idle })
    }

    fn positions(&self) -> Positions {
        Positions::from([((self.topic.clone(), self.worker), self.offset)])
    }

    fn commit(&mut self, _positions: &Positions) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimulatorConfig {
        SimulatorConfig {
            devices: 6,
            count: Some(120),
            ..SimulatorConfig::default()
        }
    }

    fn start() -> DateTime<Utc> {
        crate::time::parse_timestamp("2026-11-21T10:00:00Z").expect("time")
    }

    #[test]
    fn same_seed_same_messages_whatever_the_split() {
        let whole: Vec<SimMessage> = Simulator::new(&cfg(), start(), (0, 1)).collect();
        assert_eq!(whole.len(), 120);
        let again: Vec<SimMessage> = Simulator::new(&cfg(), start(), (0, 1)).collect();
        assert_eq!(whole, again);
        let mut split: Vec<SimMessage> = (0..3)
            .flat_map(|w| Simulator::new(&cfg(), start(), (w, 3)).collect::<Vec<_>>())
            .collect();
        let mut sorted = whole.clone();
        let key = |m: &SimMessage| (m.key.clone(), m.event_time);
        split.sort_by_key(key);
        sorted.sort_by_key(key);
        assert_eq!(split, sorted);
        let other: Vec<SimMessage> =
            Simulator::new(&SimulatorConfig { seed: 2, ..cfg() }, start(), (0, 1)).collect();
        assert_ne!(whole, other);
    }

    #[test]
    fn messages_map_with_the_bedside_templates() {
        let device = crate::mapping::DeviceMapping::from_file(std::path::Path::new(
            "templates/bedside-monitor/devicecontent.json",
        ))
        .expect("templates");
        for m in Simulator::new(&cfg(), start(), (0, 1)) {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
            let event = crate::event::wrap(body, Default::default(), Default::default());
            let ms = device.normalize(&event).expect("normalizes");
            assert!(ms.iter().any(|x| &*x.type_name == "heartRate"));
            assert!(ms.iter().all(|x| x.occurrence_time == m.event_time));
        }
    }

    #[test]
    fn pcd01_messages_map_with_the_pcd01_templates_like_the_json_ones() {
        let load = |set: &str| {
            let p = format!("templates/{set}/devicecontent.json");
            crate::mapping::DeviceMapping::from_file(std::path::Path::new(&p)).expect("templates")
        };
        let (hl7, json) = (load("ihe-pcd01"), load("bedside-monitor"));
        let pcd01 = SimulatorConfig {
            profile: "ihe-pcd01".into(),
            ..cfg()
        };
        let as_json = Simulator::new(&cfg(), start(), (0, 1));
        for (m, j) in Simulator::new(&pcd01, start(), (0, 1)).zip(as_json) {
            let text = crate::hl7::text(&m.payload).expect("an HL7 v2 message");
            let msg = crate::hl7::parse(&text).expect("parses");
            let mut ms = Vec::new();
            hl7.normalize_hl7_into(&msg, &mut ms).expect("normalizes");
            assert!(ms.iter().all(|x| x.occurrence_time == m.event_time));
            let body: serde_json::Value = serde_json::from_slice(&j.payload).expect("json");
            let event = crate::event::wrap(body, Default::default(), Default::default());
            let js = json.normalize(&event).expect("normalizes");
            let value = |ms: &[crate::model::Measurement], t: &str| {
                ms.iter()
                    .find(|x| &*x.type_name == t)
                    .map(|x| x.properties[0].1.parse::<f64>().expect("number"))
            };
            for t in ["heartRate", "spo2", "respiratoryRate"] {
                assert_eq!(
                    value(&ms, t),
                    value(&js, t),
                    "{t}: the same reading either way"
                );
            }
        }
    }

    #[test]
    fn a_single_device_with_late_bursts_still_delivers_everything() {
        let c = SimulatorConfig {
            devices: 1,
            count: Some(100),
            late_burst: Some(Duration::from_secs(20)),
            ..SimulatorConfig::default()
        };
        let msgs: Vec<SimMessage> = Simulator::new(&c, start(), (0, 1)).collect();
        assert_eq!(msgs.len(), 100);
    }

    #[test]
    fn late_bursts_deliver_a_backlog_out_of_order() {
        let c = SimulatorConfig {
            devices: 4,
            count: Some(400),
            late_burst: Some(Duration::from_secs(20)),
            ..SimulatorConfig::default()
        };
        let msgs: Vec<SimMessage> = Simulator::new(&c, start(), (0, 1)).collect();
        assert_eq!(msgs.len(), 400);
        let late = msgs
            .windows(2)
            .filter(|w| w[1].event_time + ChronoDuration::seconds(10) < w[0].event_time)
            .count();
        assert!(late > 0, "a synced backlog arrives after newer readings");
    }
}

//! Properties of the mapping engine: the compiled JSONPath matcher agrees with jsonpath-rust on
//! the conformance inputs and templates, and no input makes a compiled template panic.

use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use vitalflow::mapping::tree::Node;
use vitalflow::mapping::DeviceMapping;

fn normalize_cases() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/normalize");
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    out.sort_by_key(|c: &Value| c["name"].as_str().unwrap().to_string());
    out
}

fn template_sets() -> Vec<(DeviceMapping, DeviceMapping, Vec<Value>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for set in ["basic", "iot-hub", "calculated", "bedside-monitor"] {
        let text =
            std::fs::read_to_string(root.join(format!("templates/{set}/devicecontent.json")))
                .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut messages = Vec::new();
        for e in std::fs::read_dir(root.join(format!("datasets/{set}"))).unwrap() {
            let m: Value =
                serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
            let wrapped = vitalflow::event::wrap(m.clone(), Default::default(), Default::default());
            messages.push(if m.get("Body").is_some() { m } else { wrapped });
        }
        out.push((
            DeviceMapping::from_value(&v).unwrap(),
            DeviceMapping::from_value_reference(&v).unwrap(),
            messages,
        ));
    }
    out
}

fn outcome(m: &DeviceMapping, event: &Value) -> Result<Vec<Value>, String> {
    shown(m.normalize(event))
}

fn shown(
    r: Result<Vec<vitalflow::model::Measurement>, vitalflow::mapping::NormalizeError>,
) -> Result<Vec<Value>, String> {
    r.map(|ms| {
        ms.iter()
            .map(|x| serde_json::to_value(x.to_json()).unwrap())
            .collect()
    })
    .map_err(|e| e.field)
}

/// The same event read as the job reads messages (a borrowed `Node` tree), when the mapping
/// allows it; `None` when it needs `serde_json` values.
fn tree_outcome(m: &DeviceMapping, event: &Value) -> Option<Result<Vec<Value>, String>> {
    let bytes = serde_json::to_vec(event).unwrap();
    let arena = bumpalo::Bump::new();
    let node = Node::parse_in(&bytes, &arena).unwrap();
    let mut out = Vec::new();
    m.reads_trees()
        .then(|| shown(m.normalize_node(&node, &mut out).map(|()| out)))
}

#[test]
fn compiled_matcher_equals_jsonpath_rust_on_conformance_and_template_inputs() {
    let (mut compared, mut trees) = (0, 0);
    for case in normalize_cases() {
        let mapping = match &case["devicecontent"] {
            Value::Object(_) => case["devicecontent"].clone(),
            _ => continue,
        };
        let (Ok(fast), Ok(reference)) = (
            DeviceMapping::from_value(&mapping),
            DeviceMapping::from_value_reference(&mapping),
        ) else {
            continue;
        };
        if case["message"].is_null() {
            continue;
        }
        let expected = outcome(&reference, &case["message"]);
        assert_eq!(
            outcome(&fast, &case["message"]),
            expected,
            "case {}",
            case["name"]
        );
        if let Some(tree) = tree_outcome(&fast, &case["message"]) {
            assert_eq!(tree, expected, "case {} read as a tree", case["name"]);
            trees += 1;
        }
        compared += 1;
    }
    for (fast, reference, messages) in template_sets() {
        for m in &messages {
            let expected = outcome(&reference, m);
            assert_eq!(outcome(&fast, m), expected);
            if let Some(tree) = tree_outcome(&fast, m) {
                assert_eq!(tree, expected);
                trees += 1;
            }
            compared += 1;
        }
    }
    assert!(compared > 60, "only {compared} inputs compared");
    assert!(trees > 25, "only {trees} inputs read as trees");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            "[a-zA-Z0-9 :.-]{0,12}",
            Just("2026-11-21T10:00:00Z".to_string()),
            Just("".to_string())
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("heartRate".to_string()),
            Just("deviceId".to_string()),
            Just("patientId".to_string()),
            Just("timestamp".to_string()),
            Just("endDate".to_string()),
            Just("systolic".to_string()),
            Just("diastolic".to_string()),
            Just("nibp".to_string()),
            Just("Body".to_string()),
            Just("readings".to_string()),
            Just("hr".to_string()),
            Just("t".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys, inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_json_never_panics_and_engines_agree(body in arb_json()) {
        for (fast, reference, _) in template_sets() {
            let event = vitalflow::event::wrap(body.clone(), Default::default(), Default::default());
            let a = outcome(&fast, &event);
            let b = outcome(&reference, &event);
            if let Some(tree) = tree_outcome(&fast, &event) {
                prop_assert_eq!(&tree, &b);
            }
            // The job's entry point: payload bytes, wrapped as the connector wraps them.
            let bytes = serde_json::to_vec(&body).unwrap();
            let mut out = Vec::new();
            let job = fast.normalize_message(&bytes, Default::default(), Default::default(), &mut out);
            let job = match job {
                Ok(()) => shown(Ok(out)),
                Err(vitalflow::mapping::MessageError::Template(e)) => Err(e.field),
                Err(e) => panic!("{e:?}"),
            };
            prop_assert_eq!(&job, &b);
            prop_assert_eq!(a, b);
            let _ = fast.normalize(&body);
        }
    }
}

//! A Mosquitto broker on 127.0.0.1 for one test: started with a config of its own (plain, or
//! TLS with a password file), stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker.
pub struct Mosquitto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA certificate (PEM) its TLS certificate chains to, when it speaks TLS.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// A plain broker allowing anonymous clients.
    pub fn start() -> Self {
        Self::with("allow_anonymous true\n", None)
    }

    /// A TLS broker (certificate for 127.0.0.1 and localhost, made here) that lets in only
    /// `user` with `password`.
    pub fn tls_with_password(user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let passwords = dir.path().join("passwords");
        std::fs::write(&passwords, "").expect("password file");
        let status = Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&passwords)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (apt install mosquitto; .ci/run installs it)");
        assert!(status.success(), "mosquitto_passwd");
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("certificate");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ca.cert.pem()).expect("cert");
        std::fs::write(&key, ca.signing_key.serialize_pem()).expect("key");
        let conf = format!(
            "allow_anonymous false\npassword_file {}\ncertfile {}\nkeyfile {}\n",
            passwords.display(),
            cert.display(),
            key.display()
        );
        Self::with(&conf, Some((dir, cert)))
    }

    fn with(extra: &str, tls: Option<(tempfile::TempDir, PathBuf)>) -> Self {
        let (dir, ca) = match tls {
            Some((d, c)) => (d, Some(c)),
            None => (tempfile::tempdir().expect("dir"), None),
        };
        let port = super::free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{extra}persistence false\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nmax_queued_messages 100000\n"
            ),
        )
        .expect("config");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt install mosquitto; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            ca,
            _dir: dir,
        }
    }

    /// `mosquitto_pub` against this broker (MQTT 5, QoS 1), credentials and CA set when the
    /// broker needs them.
    pub fn publisher(&self, login: Option<(&str, &str)>) -> Command {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-V", "mqttv5", "-q", "1"]);
        if let Some(ca) = &self.ca {
            c.arg("--cafile").arg(ca);
        }
        if let Some((u, p)) = login {
            c.args(["-u", u, "-P", p]);
        }
        c
    }

    /// Publishes each line of `lines` to `topic` as one message, and waits for mosquitto_pub.
    pub fn publish_lines(&self, topic: &str, lines: &[String], login: Option<(&str, &str)>) {
        use std::io::Write;
        let mut child = self
            .publisher(login)
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            for l in lines {
                writeln!(stdin, "{l}").expect("publish");
            }
        }
        assert!(
            child.wait().expect("mosquitto_pub").success(),
            "mosquitto_pub"
        );
    }
}

/// The broker binary: Debian puts it in /usr/sbin, which a non-root PATH may lack.
fn mosquitto_bin() -> PathBuf {
    let sbin = Path::new("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("mosquitto")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

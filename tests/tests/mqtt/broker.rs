//! The broker side of the MQTT tests: mosquitto on a free loopback port, and a rumqttc
//! subscriber that keeps everything it reads.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use surv_tests::{Reaper, IO_TIMEOUT};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";
/// The longest any one message is waited for.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// mosquitto on 127.0.0.1, anonymous (or, with `login`, only that user with that password),
/// with persistence so that a subscriber's session (and the messages queued for it) outlive a
/// stop and restart.
pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Option<Reaper>,
    pub login: Option<(String, String)>,
}

impl Broker {
    pub async fn start() -> anyhow::Result<Broker> {
        Broker::start_with(None).await
    }

    /// A broker that lets in only `user` with `password`.
    pub async fn start_with_login(user: &str, password: &str) -> anyhow::Result<Broker> {
        Broker::start_with(Some((user.to_string(), password.to_string()))).await
    }

    async fn start_with(login: Option<(String, String)>) -> anyhow::Result<Broker> {
        let mut b = Broker {
            port: free_port(),
            dir: tempfile::tempdir()?,
            proc: None,
            login,
        };
        b.restart().await?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        let access = match &self.login {
            None => "allow_anonymous true\n".to_string(),
            Some((user, password)) => {
                let file = self.dir.path().join("passwd");
                let made = Command::new(MOSQUITTO_PASSWD)
                    .args(["-c", "-b"])
                    .arg(&file)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .status()
                    .with_context(|| format!("running {MOSQUITTO_PASSWD}"))?;
                anyhow::ensure!(made.success(), "{MOSQUITTO_PASSWD}: {made}");
                format!("allow_anonymous false\npassword_file {}\n", file.display())
            }
        };
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\n{access}persistence true\npersistence_location {}/\n",
                self.port,
                self.dir.path().display()
            ),
        )?;
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log"))?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {MOSQUITTO} (Debian package mosquitto)"))?;
        let mut reaper = Reaper(child);
        let until = Instant::now() + IO_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > until || reaper.0.try_wait()?.is_some() {
                let log = std::fs::read_to_string(self.dir.path().join("mosquitto.log"));
                bail!("mosquitto is not listening on {}: {log:?}", self.port);
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(reaper);
        Ok(())
    }

    /// Stops it as `kill` does (SIGTERM: it saves its sessions), SIGKILL after 5 s.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut reaper) = self.proc.take() else {
            return Ok(());
        };
        terminate(&reaper.0);
        let until = Instant::now() + Duration::from_secs(5);
        while reaper.0.try_wait()?.is_none() && Instant::now() < until {
            sleep(Duration::from_millis(20)).await;
        }
        drop(reaper);
        Ok(())
    }
}

pub fn terminate(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// A message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub at: Instant,
}

/// A rumqttc subscriber to `filter` with a session the broker keeps (QoS 1): it reconnects on
/// its own and misses nothing published while the broker was stopped and restarted.
pub struct Sub {
    rx: mpsc::UnboundedReceiver<Msg>,
    subacks: watch::Receiver<u32>,
    task: tokio::task::JoinHandle<()>,
    /// Every message read so far, in order.
    pub seen: Vec<Msg>,
}

impl Sub {
    pub async fn start(port: u16, filter: &str, id: &str) -> anyhow::Result<Sub> {
        Sub::start_as(port, filter, id, None).await
    }

    /// [`Sub::start`], logging in as `login` (user, password).
    pub async fn start_as(
        port: u16,
        filter: &str,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> anyhow::Result<Sub> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options
            .set_clean_session(false)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, rx) = mpsc::unbounded_channel();
        let (acks_tx, subacks) = watch::channel(0u32);
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Msg {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                            at: Instant::now(),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut sub = Sub {
            rx,
            subacks,
            task,
            seen: Vec::new(),
        };
        sub.subscribed(1).await?;
        Ok(sub)
    }

    /// Waits until the broker has confirmed `n` subscriptions (one per connection).
    pub async fn subscribed(&mut self, n: u32) -> anyhow::Result<()> {
        timeout(WAIT, self.subacks.wait_for(|&k| k >= n))
            .await
            .context("the subscriber was not subscribed in time")??;
        Ok(())
    }

    /// The next message (from now) that `pred` accepts, waiting at most `limit`.
    pub async fn next(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> anyhow::Result<Msg> {
        let until = Instant::now() + limit;
        loop {
            let msg = match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(m)) => m,
                _ => bail!("no {what} within {limit:?}; read so far: {:#?}", self.seen),
            };
            self.seen.push(msg.clone());
            if pred(&msg) {
                return Ok(msg);
            }
        }
    }

    /// The next `PREFIX/events` message of `type`, as JSON.
    pub async fn event(
        &mut self,
        prefix: &str,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let topic = format!("{prefix}/events");
        let msg = self
            .next(&format!("{kind} event"), WAIT, |m| {
                m.topic == topic && json(&m.payload).is_some_and(|v| v["type"] == kind && pred(&v))
            })
            .await?;
        Ok(json(&msg.payload).unwrap_or_default())
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn json(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

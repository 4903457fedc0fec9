//! The viewer's window as a person meets it, under a virtual X display (Xvfb) with a real window
//! manager (openbox): frames appear on screen, and Esc or closing the window tells the server
//! `end` and exits cleanly with the summary.
//!
//! Needs Xvfb, openbox, xdotool, wmctrl and imagemagick (scripts/setup.sh installs them); a
//! missing tool fails the test rather than skipping it. `scripts/window-soak.sh N` runs these
//! tests N times in a row, each on fresh X servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use surv_proto::{FrameTag, Reply, StreamParams};
use surv_tests::fixtures::Subsamp;
use surv_tests::{test_jpeg, Picture, Reaper};

/// How long a cold machine may take for each step that waits on X: openbox managing the display,
/// the viewer's window mapped, its first frames on screen.
const X_STEP_WITHIN: Duration = Duration::from_secs(15);

/// How long the viewer may take to exit once told to stop.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// The colour of every frame the stand-in server sends.
const RED: [u8; 3] = [220, 0, 0];

/// The stand-in server's frame interval: 30 fps.
const FRAME_EVERY: Duration = Duration::from_micros(33_333);

fn tool(name: &str) -> Command {
    Command::new(name)
}

/// Polls `ready` every 50 ms until it gives a value or `within` passes.
fn poll<T>(within: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + within;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A virtual X display of its own, with openbox managing it; both are killed on drop.
struct XDisplay {
    name: String,
    // Dropped in this order: the window manager before its server.
    _wm: Reaper,
    _xvfb: Reaper,
}

/// Starts Xvfb on a free display and openbox on it, and waits until openbox manages the display.
fn start_x() -> XDisplay {
    // -noreset: by default an X server resets when its last client disconnects, and drops the
    // clients that connect while it does ("unable to open display"). The first clients here come
    // and go (xdotool, wmctrl): openbox or the viewer connecting at such a moment was dropped, so
    // openbox died or the viewer ran headless ("cannot open a window (...XOpenDisplay failed)").
    let mut xvfb = tool("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x600x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb is missing: run scripts/setup.sh");
    let mut line = String::new();
    BufReader::new(xvfb.stdout.take().expect("Xvfb's stdout is piped"))
        .read_line(&mut line)
        .expect("reading the display number from Xvfb");
    let xvfb = Reaper(xvfb);
    assert!(
        !line.trim().is_empty(),
        "Xvfb exited without giving a display number"
    );
    let name = format!(":{}", line.trim());
    let mut wm = Reaper(
        tool("openbox")
            .env("DISPLAY", &name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openbox is missing: run scripts/setup.sh"),
    );
    // Mapping, closing and focusing a window are the window manager's work, so the viewer starts
    // only once openbox answers requests. Having set its properties is not enough: openbox 3.6
    // can leave events that arrive during its startup in its own queue and sleep until the next
    // event comes, so a window mapped then stayed unmapped (seen: 15 s unmapped, then mapped
    // within a second of one more event to openbox). Openbox acts on a request only from its
    // event loop, which empties that queue.
    let ready = poll(X_STEP_WITHIN, || {
        if let Some(status) = wm.0.try_wait().expect("polling openbox") {
            panic!("openbox exited ({status}) before managing {name}");
        }
        let now = desktops(&name)?;
        let wanted = if now == 1 { 2 } else { 1 };
        wmctrl(&name, &["-n", &wanted.to_string()]);
        // Sent again on every poll: each request is a new event, which wakes openbox.
        poll(Duration::from_millis(500), || {
            (desktops(&name)? == wanted).then_some(())
        })
    });
    assert!(
        ready.is_some(),
        "openbox did not answer requests on {name} within {X_STEP_WITHIN:?}"
    );
    XDisplay {
        name,
        _wm: wm,
        _xvfb: xvfb,
    }
}

fn wmctrl(display: &str, args: &[&str]) -> std::process::Output {
    tool("wmctrl")
        .env("DISPLAY", display)
        .args(args)
        .output()
        .expect("wmctrl is missing: run scripts/setup.sh")
}

/// How many desktops the window manager says there are; `None` before it says.
fn desktops(display: &str) -> Option<usize> {
    let out = wmctrl(display, &["-d"]);
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    (out.status.success() && n > 0).then_some(n)
}

/// A stand-in server: accepts one SURV/1 viewer and sends it solid red 320x240 frames at 30 fps
/// until it says `end` (or 20 s pass). Returns the TCP port and a flag raised on `end`.
fn fake_server() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    std::thread::spawn(move || {
        let (mut tcp, peer) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(tcp.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let udp_port: u16 = line
            .trim()
            .strip_prefix("SURV/1 ")
            .unwrap()
            .parse()
            .unwrap();
        let params = StreamParams {
            session_id: 1,
            width: 320,
            height: 240,
            fps: 30,
            max_datagram_bytes: 65_000,
            // A server without session keys: frames without waiting for a `hello`.
            key: None,
            udp_port: None,
            mtu: None,
            fec: false,
            pace: false,
        };
        tcp.write_all(&Reply::Accepted(params).encode()).unwrap();

        let jpeg = test_jpeg(320, 240, Picture::Solid(RED), 80, Subsamp::Sub2x2);
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let viewer = std::net::SocketAddr::new(peer.ip(), udp_port);
        let start = Instant::now();
        let mut next_frame = start;
        let mut datagram = Vec::new();
        let mut buf = [0u8; 64];
        'stream: for seq in 0.. {
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64;
            FrameTag {
                seq,
                capture_unix_us: now_us,
                motion: false,
                objects: false,
            }
            .encode_into(&jpeg, &mut datagram)
            .unwrap();
            udp.send_to(&datagram, viewer).unwrap();
            // Read what the viewer says (acks, then `end`) until the next frame is due: a single
            // read returns at the first ack, and the stream would run at the viewer's ack rate.
            next_frame += FRAME_EVERY;
            loop {
                let left = next_frame.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                udp.set_read_timeout(Some(left)).unwrap();
                if let Ok((n, _)) = udp.recv_from(&mut buf) {
                    if &buf[..n] == b"end" {
                        flag.store(true, Ordering::SeqCst);
                        break 'stream;
                    }
                }
            }
        }
    });
    (port, ended)
}

/// The viewer binary under test, killed on drop; its output is read as it comes, so a full pipe
/// never stalls it and a failing test can say what it printed.
struct Viewer {
    child: Reaper,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// How the viewer ended and what it printed.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Viewer {
    fn start(display: &str, port: u16) -> Viewer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surv-client"))
            .env("DISPLAY", display)
            .args([
                "127.0.0.1",
                &port.to_string(),
                "0",
                "--no-record",
                "--seconds",
                "30",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting surv-client");
        let collect = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped")));
        let stderr = collect(Box::new(child.stderr.take().expect("piped")));
        Viewer {
            child: Reaper(child),
            stdout,
            stderr,
        }
    }

    fn has_exited(&mut self) -> bool {
        self.child
            .0
            .try_wait()
            .expect("polling surv-client")
            .is_some()
    }

    /// Waits for the viewer to exit (killing it if it is still running after `within`).
    fn finish(mut self, within: Duration) -> (Ended, bool) {
        let exited = poll(within, || self.has_exited().then_some(())).is_some();
        if !exited {
            let _ = self.child.0.kill();
        }
        let status = self.child.0.wait().expect("waiting for surv-client");
        let ended = Ended {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        };
        (ended, exited)
    }
}

/// Waits (bounded) until the viewer's window is on screen (mapped by the window manager, so it
/// can be screenshot and focused) and returns its X id; `None` if it never is.
fn find_window(display: &str, viewer: &mut Viewer) -> Option<String> {
    poll(X_STEP_WITHIN, || {
        if viewer.has_exited() {
            return Some(None);
        }
        let out = tool("xdotool")
            .env("DISPLAY", display)
            .args(["search", "--onlyvisible", "--name", "^surv "])
            .output()
            .expect("xdotool is missing: run scripts/setup.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().next().map(|id| Some(id.to_string()))
    })
    .flatten()
}

/// The mean colour of the window, from a screenshot (binary PPM from imagemagick's `import`).
fn mean_rgb(display: &str, window: &str) -> [f64; 3] {
    let out = tool("import")
        .env("DISPLAY", display)
        .args(["-window", window, "-depth", "8", "ppm:-"])
        .output()
        .expect("imagemagick is missing: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ppm = out.stdout;
    // "P6\n<w> <h>\n<max>\n" then RGB bytes.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while ppm[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !ppm[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&ppm[start..at]).into_owned());
    }
    assert_eq!(
        (fields[0].as_str(), fields[3].as_str()),
        ("P6", "255"),
        "an 8-bit binary PPM"
    );
    let pixels = &ppm[at + 1..];
    let n = (pixels.len() / 3) as f64;
    let mut sum = [0f64; 3];
    for p in pixels.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    sum.map(|s| s / n)
}

fn is_red([r, g, b]: [f64; 3]) -> bool {
    r > 150.0 && g < 60.0 && b < 60.0
}

/// Shows frames, then is stopped by `how` (a command run against the window).
fn stop_viewer_by(how: &dyn Fn(&str, &str)) {
    let x = start_x();
    let display = x.name.as_str();
    let (port, ended) = fake_server();
    let mut viewer = Viewer::start(display, port);
    let Some(window) = find_window(display, &mut viewer) else {
        let (out, _) = viewer.finish(Duration::ZERO);
        panic!(
            "no surv window appeared on {display} within {X_STEP_WITHIN:?} (viewer: {}); its stderr:\n{}",
            out.status, out.stderr
        );
    };
    // The window is mapped: its first frames reach the screen with the next redraws.
    let mut rgb = [0.0; 3];
    let _ = poll(X_STEP_WITHIN, || {
        rgb = mean_rgb(display, &window);
        is_red(rgb).then_some(())
    });
    let [r, g, b] = rgb;
    assert!(
        is_red(rgb),
        "the window does not show the red frames: mean rgb {r:.0},{g:.0},{b:.0}"
    );

    how(display, &window);
    let (out, exited) = viewer.finish(EXIT_WITHIN);
    assert!(
        exited,
        "viewer still running {EXIT_WITHIN:?} after being told to stop; stderr: {}",
        out.stderr
    );
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        out.stderr
    );
    assert!(out.stdout.contains("ended_by=stopped"), "{}", out.stdout);
    let told_end = poll(Duration::from_secs(2), || {
        ended.load(Ordering::SeqCst).then_some(())
    });
    assert!(told_end.is_some(), "the server was not told `end`");
}

#[test]
fn esc_sends_end_and_exits_cleanly() {
    stop_viewer_by(&|display, window| {
        let xdotool = |args: &[&str]| {
            tool("xdotool")
                .env("DISPLAY", display)
                .args(args)
                .output()
                .unwrap()
        };
        // The window manager grants focus asynchronously: press Esc only once it has.
        let focused = poll(Duration::from_secs(5), || {
            xdotool(&["windowactivate", "--sync", window]);
            let focused = xdotool(&["getwindowfocus"]);
            (String::from_utf8_lossy(&focused.stdout).trim() == window).then_some(())
        });
        assert!(focused.is_some(), "the window never got the keyboard focus");
        assert!(
            xdotool(&["key", "Escape"]).status.success(),
            "xdotool could not press Esc"
        );
    });
}

#[test]
fn closing_the_window_sends_end_and_exits_cleanly() {
    stop_viewer_by(&|display, window| {
        // What a window manager's close button does: WM_DELETE_WINDOW to the window.
        let ok = wmctrl(display, &["-i", "-c", window]).status.success();
        assert!(ok, "wmctrl could not close the window");
    });
}

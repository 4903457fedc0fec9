//! The viewer's window as a person meets it, under a virtual X display (Xvfb) with a real window
//! manager (openbox): frames appear on screen, and Esc or closing the window tells the server
//! `end` and exits cleanly with the summary.
//!
//! Needs Xvfb, openbox, xdotool, wmctrl and imagemagick (scripts/setup.sh installs them); a
//! missing tool fails the test rather than skipping it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surv_proto::{FrameTag, Reply, StreamParams};

/// Kills the child when dropped, so a failing test leaves nothing running.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> Command {
    Command::new(name)
}

/// Starts Xvfb on a free display and openbox on it; returns the DISPLAY value.
fn start_x() -> (String, Reaper, Reaper) {
    let mut xvfb = tool("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x600x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb is missing: run scripts/setup.sh");
    let mut line = String::new();
    BufReader::new(xvfb.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let display = format!(":{}", line.trim());
    let xvfb = Reaper(xvfb);
    let wm = tool("openbox")
        .env("DISPLAY", &display)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openbox is missing: run scripts/setup.sh");
    (display, xvfb, Reaper(wm))
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
        };
        tcp.write_all(&Reply::Accepted(params).encode()).unwrap();

        let red: Vec<u8> = [220u8, 0, 0]
            .iter()
            .copied()
            .cycle()
            .take(320 * 240 * 3)
            .collect();
        let image = turbojpeg::Image {
            pixels: red.as_slice(),
            width: 320,
            pitch: 960,
            height: 240,
            format: turbojpeg::PixelFormat::RGB,
        };
        let jpeg = turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(33)))
            .unwrap();
        let viewer = std::net::SocketAddr::new(peer.ip(), udp_port);
        let start = Instant::now();
        let mut datagram = Vec::new();
        let mut buf = [0u8; 64];
        for seq in 0.. {
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
            }
            .encode_into(&jpeg, &mut datagram)
            .unwrap();
            udp.send_to(&datagram, viewer).unwrap();
            if let Ok((n, _)) = udp.recv_from(&mut buf) {
                if &buf[..n] == b"end" {
                    flag.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
    });
    (port, ended)
}

/// Waits (bounded) for the viewer's window and returns its X id.
fn find_window(display: &str) -> String {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let out = tool("xdotool")
            .env("DISPLAY", display)
            .args(["search", "--name", "^surv "])
            .output()
            .expect("xdotool is missing");
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().next() {
            return id.to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no surv window appeared on {display}");
}

/// The mean colour of the window, from a screenshot (binary PPM from imagemagick's `import`).
fn mean_rgb(display: &str, window: &str) -> [f64; 3] {
    let out = tool("import")
        .env("DISPLAY", display)
        .args(["-window", window, "-depth", "8", "ppm:-"])
        .output()
        .expect("imagemagick is missing");
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

fn wait_exit(mut child: Child, within: Duration) -> Output {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "viewer still running {within:?} after being told to stop; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Shows frames, then is stopped by `how` (a command run against the window).
fn stop_viewer_by(how: &dyn Fn(&str, &str)) {
    let (display, _xvfb, _wm) = start_x();
    let (port, ended) = fake_server();
    let viewer = Command::new(env!("CARGO_BIN_EXE_surv-client"))
        .env("DISPLAY", &display)
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
        .unwrap();
    let window = find_window(&display);
    std::thread::sleep(Duration::from_millis(700)); // a few frames drawn
    let [r, g, b] = mean_rgb(&display, &window);
    assert!(
        r > 150.0 && g < 60.0 && b < 60.0,
        "the window does not show the red frames: mean rgb {r:.0},{g:.0},{b:.0}"
    );

    how(&display, &window);
    let out = wait_exit(viewer, Duration::from_secs(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ended_by=stopped"), "{stdout}");
    let until = Instant::now() + Duration::from_secs(2);
    while !ended.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ended.load(Ordering::SeqCst),
        "the server was not told `end`"
    );
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
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            xdotool(&["windowactivate", "--sync", window]);
            let focused = xdotool(&["getwindowfocus"]);
            if String::from_utf8_lossy(&focused.stdout).trim() == window {
                break;
            }
            assert!(
                Instant::now() < until,
                "the window never got the keyboard focus"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let ok = tool("wmctrl")
            .env("DISPLAY", display)
            .args(["-i", "-c", window])
            .status()
            .expect("wmctrl is missing")
            .success();
        assert!(ok, "wmctrl could not close the window");
    });
}

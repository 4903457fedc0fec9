//! LL-HLS end to end: ffmpeg (libavformat's HLS demuxer, a real player) reads
//! `/cam/main/index.m3u8` and decodes the frames; a scripted LL-HLS client checks that a
//! blocking reload waits for its part and no longer, measures how far behind capture each part
//! is when a client gets it, and checks the cache headers, the token rules and the 400s.

#[path = "http/client.rs"]
#[allow(dead_code)]
mod client;

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use surv_server::auth::Token;
use surv_server::Config;
use surv_tests::{output_within, ServerOpts};
use tokio::time::Instant;

use client::{get, get_with, start_web};

/// ffmpeg gets this long.
const PLAYER_LIMIT: Duration = Duration::from_secs(30);
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;

/// Runs a player (blocking) off the runtime; its output.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || output_within(&mut cmd, PLAYER_LIMIT))
        .await
        .unwrap()
        .unwrap()
}

/// The frames in ffmpeg's framecrc output, how many the timestamps say there were from the
/// first to the last (a frame lost shows as a gap), and the decoded frames' sizes in bytes.
fn framecrc(stdout: &[u8]) -> (usize, usize, Vec<u64>) {
    let rows: Vec<(i64, u64)> = String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            Some((f.get(1)?.parse().ok()?, f.get(4)?.parse().ok()?))
        })
        .collect();
    let pts: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let sizes = rows.iter().map(|r| r.1).collect();
    if pts.len() < 2 {
        return (pts.len(), pts.len(), sizes);
    }
    let mut steps: Vec<i64> = pts.windows(2).map(|w| w[1] - w[0]).collect();
    steps.sort_unstable();
    let step = steps[steps.len() / 2].max(1);
    let span = pts[pts.len() - 1] - pts[0];
    (
        pts.len(),
        (span as f64 / step as f64).round() as usize + 1,
        sizes,
    )
}

/// ffmpeg reads the playlist as any HLS player does (whole segments, reloading the playlist)
/// and decodes 150 frames (5 s): H.264 at the camera's size, ≥ 99 % of the frames the
/// timeline says were there; ffprobe names the codec and size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_the_playlist_and_decodes_every_frame() {
    // Players take turns (ffmpeg, VLC, Chromium, nginx): one must not starve another's clock.
    let _heavy = surv_tests::heavy().await;
    let web = start_web(ServerOpts::sized(WIDTH, HEIGHT)).await;
    let url = format!("http://{}/cam/main/index.m3u8", web.http);
    let mut ffmpeg = Command::new("ffmpeg");
    ffmpeg
        .args(["-v", "error", "-i", &url])
        // The stream's own timestamps (capture time): how far behind capture it played.
        .args(["-copyts", "-frames:v", "150", "-f", "framecrc", "-"]);
    let mut ffprobe = Command::new("ffprobe");
    ffprobe
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
        ])
        .args(["-of", "compact", &url]);
    let started = Instant::now();
    let (played, probed) = tokio::join!(run(ffmpeg), run(ffprobe));
    let took = started.elapsed();
    let ended_us = now_us();
    let err = String::from_utf8_lossy(&played.stderr);
    assert!(played.status.success(), "ffmpeg: {err}");
    assert!(err.trim().is_empty(), "ffmpeg complained: {err}");
    let (got, expected, sizes) = framecrc(&played.stdout);
    assert_eq!(got, 150, "ffmpeg decoded {got} frames");
    assert!(
        got as f64 >= 0.99 * expected as f64,
        "{got} frames of {expected} in the timeline"
    );
    // Decoded I420 frames of the camera's size.
    let frame_bytes = u64::from(WIDTH * HEIGHT * 3 / 2);
    assert!(sizes.iter().all(|&s| s == frame_bytes), "{sizes:?}");
    let probe = String::from_utf8_lossy(&probed.stdout);
    assert!(
        probe.contains(&format!("codec_name=h264|width={WIDTH}|height={HEIGHT}")),
        "ffprobe: {probe} {}",
        String::from_utf8_lossy(&probed.stderr)
    );
    let hls = &web.srv.server.stats.hls;
    assert_eq!(hls.muxers_started.load(Relaxed), 1, "one muxer for both");
    assert!(hls.segments_served.load(Relaxed) >= 3);
    assert!(hls.playlists_served.load(Relaxed) >= 2);
    // The media clock is the capture clock (90 kHz from µs since the epoch): how far the
    // last frame ffmpeg decoded was behind capture when ffmpeg ended.
    let behind_s = last_pts_s(&played.stdout).map(|pts| ended_us as f64 / 1e6 - pts);
    eprintln!(
        "ffmpeg: {got} frames of {expected} in {:.1} s (with ffprobe), {} segments served, \
         its last frame {behind_s:.2?} s behind capture at its end",
        took.as_secs_f64(),
        hls.segments_served.load(Relaxed)
    );
    web.stop().await;
}

/// VLC (Debian's `cvlc` 3.0, which has no RTSP client: built without live555) plays the
/// playlist headless and writes every tenth picture it decodes as a JPEG (its `scene` filter).
/// Each is the camera's size and carries the test pattern's capture time in its bottom row;
/// their numbers against their capture times say VLC decoded every frame between them.
///
/// The muxer runs first until its playlist holds four segments, as it does for every player
/// after the first. VLC 3 plays HLS from its live edge without LL-HLS's parts: started on the
/// playlist of a muxer its own request has just started (one segment), its buffer ran dry a
/// few seconds in, and it restarted its clock and flushed its decoder: repeated pictures in 10
/// of 10 tries, and up to about 20 grey ones in 5 ("ES_OUT_SET_(GROUP_)PCR is called too late"
/// in its log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlc_plays_the_playlist_and_decodes_every_frame() {
    // Players take turns (ffmpeg, VLC, Chromium, nginx): one must not starve another's clock.
    let _heavy = surv_tests::heavy().await;
    const EVERY: u64 = 10;
    let web = start_web(ServerOpts::sized(WIDTH, HEIGHT)).await;
    let playlist = "/cam/main/index.m3u8";
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = get(web.http, playlist).await.unwrap();
        if reply.text().matches("#EXTINF").count() >= 4 {
            break;
        }
        assert!(
            Instant::now() < until,
            "no 4 segments in 15 s: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = format!("http://{}{playlist}", web.http);
    // VLC's clock is its own: starved of the CPU for a second or more (seen once, on a busy CI
    // machine), it finds itself late, flushes its decoder and shows grey pictures until the
    // next keyframe, and says "is called too late" in its log. Such a run is not judged and
    // VLC plays again, up to three times; the third is judged whatever its log says.
    let mut attempt = 0;
    let times = loop {
        attempt += 1;
        let (times, late) = vlc_reads_time_codes(&url, EVERY).await;
        if late.is_empty() || attempt == 3 {
            break times.unwrap_or_else(|why| panic!("attempt {attempt}: {why}; late: {late:?}"));
        }
        eprintln!("vlc: attempt {attempt} not judged, VLC fell behind its clock: {late:?}");
    };
    // Each picture ten frames after the one before at 30 a second (a frame either way for the
    // source's own late ticks on a busy machine), and as many frames decoded from the first to
    // the last as the capture times say were made (3 % for those late ticks).
    let frame_ms = 1000.0 / 30.0;
    for pair in times.windows(2) {
        let ((n0, t0), (n1, t1)) = (pair[0], pair[1]);
        let frames = f64::from(t1.wrapping_sub(t0)) / frame_ms;
        assert!(
            (frames - (n1 - n0) as f64).abs() <= 1.2,
            "pictures {n0} and {n1}: {frames:.1} frames apart: {times:?}"
        );
    }
    let (first, last) = (times[0], times[times.len() - 1]);
    let spanned = (f64::from(last.1.wrapping_sub(first.1)) / frame_ms).round() as u64;
    let decoded = last.0 - first.0;
    assert!(
        decoded as f64 >= 0.97 * spanned as f64,
        "VLC decoded {decoded} frames where {spanned} were captured: {times:?}"
    );
    eprintln!(
        "vlc: {} pictures, every {EVERY}th of {decoded} frames decoded; {spanned} captured",
        times.len()
    );
    web.stop().await;
}

/// hls.js, the LL-HLS player of web pages (`scripts/setup.sh` puts it in `models/`), plays the
/// playlist in headless Chromium, in low-latency mode, in a page of another origin (CORS). The
/// page reads the test pattern's capture time from each picture shown. It starts, shows ≥ 2/3
/// of the frames over 6 s with every code readable and no fatal error, is live (each picture
/// within 5 s of its capture; how close is `surv-load --glass`'s figure, not a test's), and
/// plays LL-HLS: blocking playlist reloads and parts, not whole segments only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_in_chromium_plays_the_playlist_at_low_latency() {
    const SECS: u64 = 6;
    // Players take turns (ffmpeg, VLC, Chromium, nginx): one must not starve another's clock.
    let _heavy = surv_tests::heavy().await;
    let web = start_web(ServerOpts::sized(WIDTH, HEIGHT)).await;
    let origin = format!("http://{}", web.http);
    let seen = tokio::task::spawn_blocking(move || play_with_hls_js(&origin, SECS))
        .await
        .unwrap()
        .unwrap();
    let glass = &seen["glass"];
    let frames = glass["frames"].as_u64().unwrap_or(0);
    let late = surv_tests::chromium::glass_samples(glass).unwrap_or_default();
    let errors = seen["errors"].as_array().cloned().unwrap_or_default();
    eprintln!(
        "hls.js {}: {frames} frames in {SECS} s, behind capture p50 {:?} ms, max {:?} ms; errors {errors:?}",
        seen["version"],
        late.get(late.len() / 2),
        late.last()
    );
    // Two thirds: a busy machine's Chromium skips showing some (a stalled player shows none).
    assert!(frames as f64 >= 2.0 / 3.0 * 30.0 * SECS as f64, "{seen}");
    assert_eq!(glass["unreadable"], 0, "{seen}");
    assert!(late.last().is_some_and(|&ms| ms < 5000.0), "{seen}");
    assert!(
        errors
            .iter()
            .all(|e| !e.as_str().unwrap_or_default().starts_with("fatal")),
        "{seen}"
    );
    let hls = &web.srv.server.stats.hls;
    assert!(hls.blocked_reloads.load(Relaxed) > 0, "no blocking reload");
    assert!(hls.parts_served.load(Relaxed) > 0, "no part asked for");
    web.stop().await;
}

/// Plays `{origin}/cam/main/index.m3u8` with hls.js in a page of another origin until its first
/// picture (20 s at most), then `secs` more: what `TIME_CODE_READER` saw over those, hls.js's
/// version and errors.
fn play_with_hls_js(origin: &str, secs: u64) -> anyhow::Result<serde_json::Value> {
    use surv_tests::chromium::{play_hls, Browser, TIME_CODE_READER};
    let mut browser = Browser::launch_with(&["--autoplay-policy=no-user-gesture-required"])?;
    browser.open("about:blank")?;
    browser.on_every_document(TIME_CODE_READER)?;
    // A page of another origin, as a site that embeds the camera: `/status` of the same server
    // but by the name `localhost`, so every request hls.js makes to `origin` (127.0.0.1) is
    // cross-origin, read under the server's CORS. (From `about:blank` Chromium blocks requests
    // to a loopback address whatever the CORS headers: status 0.)
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let other = origin.replace("127.0.0.1", "localhost");
    anyhow::ensure!(other != origin, "{origin} is not 127.0.0.1");
    browser.navigate_loaded(&format!("{other}/status"), until)?;
    let version = browser.eval(&play_hls(&format!("{origin}/cam/main/index.m3u8"))?)?;
    browser.first_picture(until, "({ glass: window.glass, errors: window.hlsErrors })")?;
    browser.reset_glass()?;
    std::thread::sleep(Duration::from_secs(secs));
    let mut seen = browser.eval("({ glass: window.glass, errors: window.hlsErrors })")?;
    seen["version"] = version;
    browser.close();
    Ok(seen)
}

/// VLC plays `url` headless for 5 s and writes every `every`th picture it decodes; each
/// picture's number (from 1) and the capture time it shows (ms modulo 2^32), or why they can't
/// be read; and the lines where VLC's log says its clock was late.
async fn vlc_reads_time_codes(
    url: &str,
    every: u64,
) -> (Result<Vec<(u64, u32)>, String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    // VLC refuses to run as root: as `nobody`, then, which must be able to write here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut vlc = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "cvlc"]);
        c
    } else {
        Command::new("cvlc")
    };
    vlc.env("HOME", dir.path())
        .args([
            "--intf",
            "dummy",
            "--vout",
            "dummy",
            "--aout",
            "dummy",
            "--no-audio",
        ])
        .args(["--play-and-exit", "--run-time", "5"])
        // Late pictures are kept, not dropped: on a busy machine VLC falls behind instead.
        .args(["--no-drop-late-frames", "--no-skip-frames"])
        .args([
            "--video-filter",
            "scene",
            "--scene-format",
            "jpg",
            "--scene-prefix",
            "f",
        ])
        .arg(format!("--scene-ratio={every}"))
        .arg(format!("--scene-path={}", dir.path().display()))
        .arg(url);
    let started_ms = now_us() / 1000;
    let played = run(vlc).await;
    let ended_ms = now_us() / 1000;
    let log = String::from_utf8_lossy(&played.stderr);
    let late = log
        .lines()
        .filter(|l| l.contains("is called too late"))
        .map(str::to_string)
        .collect();
    let read = || {
        if !played.status.success() {
            return Err(format!("cvlc: {log}"));
        }
        // f00001.jpg, f00011.jpg, …: the decoded picture's number, from 1.
        let mut pictures: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let n = name.strip_prefix('f')?.strip_suffix(".jpg")?.parse().ok()?;
                Some((n, path))
            })
            .collect();
        pictures.sort();
        if pictures.len() < 8 {
            return Err(format!("VLC wrote {} pictures: {log}", pictures.len()));
        }
        let (w, h) = (WIDTH as usize, HEIGHT as usize);
        let code = surv_server::sources::test_pattern::TimeCode::layout(w, h).unwrap();
        let mut times = Vec::new();
        for (n, path) in &pictures {
            let jpeg = std::fs::read(path).unwrap();
            let gray = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::GRAY).unwrap();
            // VLC writes the picture a little taller than the camera's (258 rows for 240, 482
            // for 480): scaled back, nearest row, to read the code where the camera drew it.
            let size = (gray.width, gray.height);
            if size.0 != w || !(h..h * 9 / 8).contains(&size.1) {
                return Err(format!("picture {n}: {size:?}"));
            }
            let plane: Vec<u8> = (0..h)
                .flat_map(|y| {
                    let row = (y * gray.height + gray.height / 2) / h;
                    gray.pixels[row * gray.pitch..][..w].to_vec()
                })
                .collect();
            let ms = code.read(&plane, w).unwrap();
            // Captured while VLC ran, or up to 10 s before (the segments behind the live
            // edge); milliseconds modulo 2^32. A grey picture (decoded without its
            // references) reads as anything, mostly far from now.
            let behind = (ended_ms as u32).wrapping_sub(ms);
            if u64::from(behind) > ended_ms - started_ms + 10_000 {
                return Err(format!(
                    "picture {n}: captured at {ms}, VLC ran {started_ms}..{ended_ms} (mod 2^32)"
                ));
            }
            times.push((*n, ms));
        }
        Ok(times)
    };
    (read(), late)
}

/// The last frame's time in seconds, from framecrc's time base (`#tb 0: 1/90000`).
fn last_pts_s(stdout: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(stdout);
    let tb = text.lines().find_map(|l| l.strip_prefix("#tb 0: "))?;
    let (num, den) = tb.trim().split_once('/')?;
    let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
    let pts: f64 = text
        .lines()
        .rfind(|l| !l.starts_with('#'))?
        .split(',')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(pts * num / den)
}

/// A playlist's facts the tests need.
struct Playlist {
    text: String,
}

impl Playlist {
    fn hint(&self) -> (u64, usize, String) {
        let line = self
            .text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
            .expect("a preload hint");
        let uri = line.trim_end_matches('"').to_string();
        let (msn, part) = part_numbers(&uri);
        (msn, part, uri)
    }

    /// Each part's URI, the capture time of its first picture (µs since the epoch: its
    /// segment's `EXT-X-PROGRAM-DATE-TIME` plus the parts before it), and `INDEPENDENT`.
    fn parts(&self) -> Vec<(String, u64, bool)> {
        let mut at_us = 0u64;
        let mut parts = Vec::new();
        for line in self.text.lines() {
            if let Some(date) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
                let t = chrono::DateTime::parse_from_rfc3339(date).unwrap();
                at_us = t.timestamp_micros() as u64;
            } else if let Some(attrs) = line.strip_prefix("#EXT-X-PART:") {
                let duration: f64 = attr(attrs, "DURATION").parse().unwrap();
                let uri = attr(attrs, "URI").trim_matches('"').to_string();
                parts.push((uri, at_us, attrs.contains("INDEPENDENT=YES")));
                at_us += (duration * 1e6) as u64;
            }
        }
        parts
    }
}

fn attr<'a>(attrs: &'a str, name: &str) -> &'a str {
    attrs
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_default()
}

/// `…/<msn>.<part>.m4s` → (msn, part).
fn part_numbers(uri: &str) -> (u64, usize) {
    let name = uri.rsplit('/').next().unwrap().trim_end_matches(".m4s");
    let (msn, part) = name.split_once('.').unwrap();
    (msn.parse().unwrap(), part.parse().unwrap())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A blocking reload waits for its part, and answers as soon as it exists; the part after a
/// hint is waited for too; parts are immutable (`Cache-Control`, `ETag`, 304). Each part,
/// asked for the moment it can be, arrives within 1.5 s of its first picture's capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reloads_wait_for_the_part_and_parts_are_immutable() {
    let web = start_web(ServerOpts::sized(WIDTH, HEIGHT)).await;
    let http = web.http;
    let first = get(http, "/cam/main/index.m3u8").await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(first.header("access-control-allow-origin"), Some("*"));
    let list = Playlist {
        text: String::from_utf8(first.body).unwrap(),
    };
    for tag in [
        "#EXT-X-VERSION:",
        "#EXT-X-TARGETDURATION:1\n",
        "#EXT-X-PART-INF:PART-TARGET=0.200\n",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600\n",
        "#EXT-X-MAP:URI=\"hls/",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXTINF:",
    ] {
        assert!(list.text.contains(tag), "no {tag} in\n{}", list.text);
    }
    let parts = list.parts();
    assert!(parts.first().is_some_and(|p| p.2), "{}", list.text);

    // Two parts past the newest: the answer waits for them (≥ 1 part of 200 ms), no longer.
    let (msn, part, _) = list.hint();
    let asked = Instant::now();
    let q = format!("/cam/main/index.m3u8?_HLS_msn={msn}&_HLS_part={}", part + 1);
    let blocked = get(http, &q).await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(blocked.status, 200);
    let text = String::from_utf8(blocked.body).unwrap();
    let listed = |m: u64, p: usize| {
        text.contains(&format!("/{m}.{p}.m4s\""))
            || (p > 0 && text.contains(&format!("/{m}.m4s\n")))
            || text.contains(&format!("/{}.0.m4s\"", m + 1))
    };
    assert!(
        listed(msn, part + 1),
        "part {msn}.{} not in\n{text}",
        part + 1
    );
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(1500),
        "waited {waited:?}"
    );

    // Follow the live edge: ask for the hinted part by blocking reload, then fetch it.
    let mut latencies_ms = Vec::new();
    let mut text = text;
    for _ in 0..15 {
        let (msn, part, uri) = Playlist { text: text.clone() }.hint();
        let q = format!("/cam/main/index.m3u8?_HLS_msn={msn}&_HLS_part={part}");
        let reply = get(http, &q).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("cache-control"), Some("public, max-age=6"));
        text = String::from_utf8(reply.body).unwrap();
        let parts = Playlist { text: text.clone() }.parts();
        let Some((_, capture_us, _)) = parts.iter().find(|p| p.0 == uri) else {
            // The segment ended before that part: the next segment's first one came instead.
            continue;
        };
        let got = get(http, &format!("/cam/main/{uri}")).await.unwrap();
        assert_eq!(got.status, 200);
        latencies_ms.push(now_us().saturating_sub(*capture_us) as f64 / 1000.0);
    }
    latencies_ms.sort_by(f64::total_cmp);
    eprintln!("part latency to capture, ms (sorted): {latencies_ms:?}");
    assert!(latencies_ms.len() >= 10, "{latencies_ms:?}");
    assert!(
        *latencies_ms.last().unwrap() <= 1500.0,
        "a part came {latencies_ms:?} ms after its capture"
    );

    // The part after the newest, asked for before it exists (the preload hint): it waits. A
    // late frame can end its segment first (a keyframe's time came): then that part never
    // comes, the answer is 404, the playlist shows the next segment begun without it, and the
    // new hint is tried.
    let mut tries = 0;
    let (part, asked, hinted) = loop {
        let (msn, _, hinted) = Playlist { text: text.clone() }.hint();
        let asked = Instant::now();
        let part = get(http, &format!("/cam/main/{hinted}")).await.unwrap();
        if part.status != 404 {
            break (part, asked, hinted);
        }
        tries += 1;
        text = get(http, "/cam/main/index.m3u8")
            .await
            .unwrap()
            .text()
            .into_owned();
        let parts = Playlist { text: text.clone() }.parts();
        let next = format!("/{}.0.m4s", msn + 1);
        assert!(
            tries < 5 && parts.iter().all(|p| p.0 != hinted) && text.contains(&next),
            "try {tries}: {hinted} was 404 and the playlist is\n{text}"
        );
    };
    assert_eq!(part.status, 200);
    assert!(!part.body.is_empty());
    assert!(asked.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        part.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(part.header("access-control-allow-origin"), Some("*"));
    let etag = part.header("etag").expect("an ETag").to_string();
    let again = get_with(
        http,
        &format!("/cam/main/{hinted}"),
        &[("If-None-Match", &etag)],
    )
    .await
    .unwrap();
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let init_uri = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .unwrap()
        .trim_end_matches('"');
    let init = get(http, &format!("/cam/main/{init_uri}")).await.unwrap();
    assert_eq!(init.status, 200);
    assert_eq!(&init.body[4..8], b"ftyp");
    // A plain playlist is short-lived.
    let plain = get(http, "/cam/main/index.m3u8").await.unwrap();
    assert_eq!(plain.header("cache-control"), Some("public, max-age=1"));
    let hls = &web.srv.server.stats.hls;
    assert!(hls.blocked_reloads.load(Relaxed) >= 2);
    // /status tells the same counters (nothing else asks for parts or playlists now).
    let status: serde_json::Value =
        serde_json::from_slice(&get(http, "/status").await.unwrap().body).unwrap();
    let of = |name: &str| status["hls"][name].as_u64();
    assert_eq!(of("muxers"), Some(1), "{status}");
    assert_eq!(of("waiting"), Some(0), "{status}");
    for (name, counter) in [
        ("blocked_reloads", &hls.blocked_reloads),
        ("parts_served", &hls.parts_served),
        ("playlists_served", &hls.playlists_served),
        ("inits_served", &hls.inits_served),
        ("not_modified", &hls.not_modified),
    ] {
        assert_eq!(of(name), Some(counter.load(Relaxed)), "{name} in {status}");
    }
    web.stop().await;
}

/// With `--token`: the playlist needs it, the media does not (its stream id stands in);
/// a wrong stream id is 404, bad or too-far queries 400, each counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_the_playlist_and_bad_queries_are_400() {
    let config = Config {
        token: Some(Token::new("s3cret").unwrap()),
        ..Config::default()
    };
    let web = start_web(ServerOpts {
        config,
        ..ServerOpts::sized(WIDTH, HEIGHT)
    })
    .await;
    let http = web.http;
    let refused = get(http, "/cam/main/index.m3u8").await.unwrap();
    assert_eq!(refused.status, 401);
    // A page of another origin can read why (CORS on refusals too).
    assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    let ok = get(http, "/cam/main/index.m3u8?token=s3cret")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("cache-control"), Some("public, max-age=1"));
    let text = String::from_utf8(ok.body).unwrap();
    let bearer = get_with(http, "/index.m3u8", &[("Authorization", "Bearer s3cret")])
        .await
        .unwrap();
    assert_eq!(bearer.status, 200);
    // Asked with a header, not by URL: no shared cache may keep it.
    assert_eq!(bearer.header("cache-control"), Some("private, max-age=1"));
    assert!(String::from_utf8(bearer.body)
        .unwrap()
        .contains("#EXT-X-MAP:URI=\"cam/main/hls/"));

    let segment = text
        .lines()
        .find(|l| l.starts_with("hls/") && l.ends_with(".m4s"))
        .expect("a segment");
    let media = get(http, &format!("/cam/main/{segment}")).await.unwrap();
    assert_eq!(media.status, 200, "media without the token");
    assert_eq!(&media.body[4..8], b"moof");
    let id = segment.split('/').nth(1).unwrap();
    let forged = segment.replace(id, &"0".repeat(32));
    assert_eq!(
        get(http, &format!("/cam/main/{forged}"))
            .await
            .unwrap()
            .status,
        404
    );
    for bad in [
        "init.mp4x",
        "1.2.3.m4s",
        "-1.m4s",
        "99999999999999999999999.m4s",
        "..%2F.m4s",
    ] {
        let path = format!("/cam/main/hls/{id}/{bad}");
        assert_eq!(get(http, &path).await.unwrap().status, 404, "{path}");
    }
    let (msn, _, _) = Playlist { text }.hint();
    for query in [
        "_HLS_part=1".to_string(),
        "_HLS_msn=abc".to_string(),
        "_HLS_msn=1&_HLS_msn=2".to_string(),
        format!("_HLS_msn={}", msn + 5),
        format!("_HLS_msn={msn}&_HLS_part=40"),
        format!("_HLS_msn={}", u64::MAX),
    ] {
        let path = format!("/cam/main/index.m3u8?token=s3cret&{query}");
        let reply = get(http, &path).await.unwrap();
        assert_eq!(reply.status, 400, "{query}");
    }
    assert_eq!(
        get(http, "/cam/nope/index.m3u8?token=s3cret")
            .await
            .unwrap()
            .status,
        404
    );
    let hls = &web.srv.server.stats.hls;
    assert_eq!(hls.refused_bad_request.load(Relaxed), 6);
    assert!(hls.refused_not_found.load(Relaxed) >= 7);
    let metrics = get(http, "/metrics?token=s3cret").await.unwrap();
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        metrics.contains("surv_hls_refused_bad_request_total 6"),
        "{metrics}"
    );
    web.stop().await;
}

/// Two nginx edges from `deploy/nginx-edge.conf`, each its own process on loopback with its own
/// cache, in front of the origin; three LL-HLS players on each follow the live edge (blocking
/// reload for the hinted part, then the part). Every player gets every part it asks for,
/// within 1.5 s of its capture, while the origin serves each part at most once per edge and
/// far fewer playlists than the players ask for: the players cost the origin nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nginx_edges_cache_the_origin_for_their_players() {
    const PLAYERS_PER_EDGE: usize = 3;
    const PARTS: usize = 10;
    let _heavy = surv_tests::heavy().await;
    let web = start_web(ServerOpts::sized(WIDTH, HEIGHT)).await;
    let edges = [
        surv_tests::nginx::Edge::start(web.http).unwrap(),
        surv_tests::nginx::Edge::start(web.http).unwrap(),
    ];
    let hls = &web.srv.server.stats.hls;
    // The muxer starts with the first request; its parts then come every 200 ms.
    let first = get(edges[0].addr, "/cam/main/index.m3u8").await.unwrap();
    assert_eq!(first.status, 200, "{}", edges[0].log());
    let (parts0, playlists0) = (
        hls.parts_served.load(Relaxed),
        hls.playlists_served.load(Relaxed),
    );

    let mut players = Vec::new();
    for edge in &edges {
        for _ in 0..PLAYERS_PER_EDGE {
            let addr = edge.addr;
            players.push(tokio::spawn(async move {
                let mut text =
                    String::from_utf8(get(addr, "/cam/main/index.m3u8").await.unwrap().body)
                        .unwrap();
                let (mut got, mut asked, mut hits, mut worst_ms) = (Vec::new(), 0, 0, 0.0f64);
                while got.len() < PARTS && asked < 3 * PARTS {
                    asked += 1;
                    let (msn, part, uri) = Playlist { text: text.clone() }.hint();
                    let q = format!("/cam/main/index.m3u8?_HLS_msn={msn}&_HLS_part={part}");
                    let reply = get(addr, &q).await.unwrap();
                    assert_eq!(reply.status, 200);
                    text = String::from_utf8(reply.body).unwrap();
                    let parts = Playlist { text: text.clone() }.parts();
                    let Some((_, capture_us, _)) = parts.iter().find(|p| p.0 == uri) else {
                        continue; // the segment ended first: follow the new hint
                    };
                    let part = get(addr, &format!("/cam/main/{uri}")).await.unwrap();
                    assert_eq!(part.status, 200);
                    assert!(!part.body.is_empty());
                    if part.header("x-cache") == Some("HIT") {
                        hits += 1;
                    }
                    worst_ms = worst_ms.max(now_us().saturating_sub(*capture_us) as f64 / 1e3);
                    got.push(uri);
                }
                (got, hits, worst_ms)
            }));
        }
    }
    let mut distinct = std::collections::BTreeSet::new();
    let (mut fetched, mut hits) = (0, 0);
    for player in players {
        let (got, h, worst_ms) = player.await.unwrap();
        assert_eq!(got.len(), PARTS, "a player got {got:?}");
        assert!(
            worst_ms <= 1500.0,
            "a part came {worst_ms} ms after capture"
        );
        fetched += got.len();
        hits += h;
        distinct.extend(got);
    }
    let origin_parts = hls.parts_served.load(Relaxed) - parts0;
    let origin_playlists = hls.playlists_served.load(Relaxed) - playlists0;
    eprintln!(
        "{} players fetched {fetched} parts ({} distinct, {hits} cache hits at the edges); \
         the origin served {origin_parts} parts and {origin_playlists} playlists",
        edges.len() * PLAYERS_PER_EDGE,
        distinct.len()
    );
    assert!(hits > 0, "no cache hit at an edge");
    assert!(
        origin_parts <= (edges.len() * distinct.len()) as u64,
        "{origin_parts} parts from the origin for {} distinct ones through {} edges",
        distinct.len(),
        edges.len()
    );
    // Each player asked for at least PARTS + 1 playlists; the edges' locks share them.
    let asked = (edges.len() * PLAYERS_PER_EDGE * (PARTS + 1)) as u64;
    assert!(
        origin_playlists * 2 <= asked,
        "{origin_playlists} playlists from the origin for {asked} asked"
    );
    drop(edges);
    web.stop().await;
}

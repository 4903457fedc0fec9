//! The window: shows the newest decoded frame with frame rate, loss and latency in its title.
//!
//! minifb draws through X11, loaded at run time, so the binary starts on machines without X
//! libraries; with no display at all the viewer runs headless and says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minifb::{InputCallback, Key, Window, WindowOptions};
use tokio_util::sync::CancellationToken;

/// Redraws per second at most.
const REDRAW_EVERY: Duration = Duration::from_millis(16);

/// One decoded frame as the window draws it: `0x00RRGGBB` pixels, row by row.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u32>,
}

/// The newest decoded frame and the status line, shared by the decoder, the receiver and the window.
#[derive(Default)]
pub struct Latest {
    image: Mutex<Option<Image>>,
    status: Mutex<String>,
}

impl Latest {
    pub fn put(&self, image: Image) {
        *self.image.lock().unwrap_or_else(|p| p.into_inner()) = Some(image);
    }

    /// The frame put since the last take, if any.
    pub fn take(&self) -> Option<Image> {
        self.image.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn set_status(&self, status: String) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why there is no window.
pub fn no_display_reason() -> Option<&'static str> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
    (!set("DISPLAY")).then_some("no X display (DISPLAY is not set)")
}

/// Catches Esc from the key events themselves: a press and release that arrive between two
/// redraws would be missed by polling the key's state.
struct EscWatch(Arc<AtomicBool>);

impl InputCallback for EscWatch {
    fn add_char(&mut self, _: u32) {}

    fn set_key_state(&mut self, key: Key, down: bool) {
        if key == Key::Escape && down {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs the window on this thread until it is closed, Esc is pressed, or `stop` is cancelled;
/// closing the window cancels `stop`. Errors if no window can be opened.
pub fn run_window(
    title: &str,
    latest: &Latest,
    stop: &CancellationToken,
) -> Result<(), minifb::Error> {
    let options = WindowOptions {
        resize: true,
        scale_mode: minifb::ScaleMode::AspectRatioStretch,
        ..WindowOptions::default()
    };
    let mut window: Option<Window> = None;
    let mut last_status = String::new();
    let esc = Arc::new(AtomicBool::new(false));
    while !stop.is_cancelled() {
        match latest.take() {
            Some(image) => {
                let w = match &mut window {
                    Some(w) => w,
                    None => {
                        let mut w = Window::new(title, image.width, image.height, options)?;
                        w.set_input_callback(Box::new(EscWatch(esc.clone())));
                        window.insert(w)
                    }
                };
                w.update_with_buffer(&image.pixels, image.width, image.height)?;
            }
            None => {
                if let Some(w) = &mut window {
                    w.update();
                }
            }
        }
        if let Some(w) = &mut window {
            if !w.is_open() || esc.load(Ordering::Relaxed) {
                break;
            }
            let status = latest.status();
            if status != last_status {
                w.set_title(&format!("{title} — {status}"));
                last_status = status;
            }
        }
        std::thread::sleep(REDRAW_EVERY);
    }
    stop.cancel();
    Ok(())
}

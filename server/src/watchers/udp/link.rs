//! One UDP viewer's end of the data path: its ack window, the frame waiting on it, its tally,
//! shared by the data path (which sends and settles acks) and the session task (which decides
//! when the session ends).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::data_path::{DataPath, SentFrame, SharedSocket};
use super::pacing::Paced;
use super::rate::Rate;
use super::window::Window;
use crate::capture::SharedFrame;
use crate::watchers::Tally;

/// What the data path and the session task share about one viewer.
pub(crate) struct LinkState {
    pub window: Window,
    /// The newest frame not yet sent because the window was full.
    pub pending: Option<SharedFrame>,
    /// The newest frame offered to this viewer: the join and the fan-out may both see the frame
    /// current at join, and it must go out once.
    pub offered: Option<u64>,
    pub tally: Tally,
    pub last_heard: Instant,
    /// The viewer said `end`.
    pub ended: bool,
    pub send_errors: u32,
    /// The session key its acks must carry (SURV/1); `None` for the seed form, which has none.
    pub key: Option<u64>,
    /// Frames may go: the viewer said `hello` with its key from the announced port (SURV/1), or
    /// from the start (the seed form).
    pub confirmed: bool,
    /// A chunked session (its `hello` asked for chunks): the payload bytes of each chunk;
    /// `None`: whole frame datagrams.
    pub chunk_bytes: Option<usize>,
    /// The share of chunks its viewer last reported lost, in thousandths (`l=`): parity
    /// chunks follow it ([`super::chunks::parity_chunks`]).
    pub loss_permille: Option<u16>,
    /// The rate its viewer last reported its path delivers, in kbit/s (`p=`): its frames'
    /// chunks are paced to it ([`super::pacing`]).
    pub path_kbps: Option<u32>,
    /// A chunked session's frame still leaving paced.
    pub paced: Option<Paced>,
    /// A chunked session's frames last sent, oldest first, for its `nack`s
    /// (at most [`super::data_path::REPAIR_FRAMES`]).
    pub sent_chunked: VecDeque<SentFrame>,
    /// A chunked session's rate: the frames its path carries ([`super::rate`]).
    pub rate: Rate,
}

impl LinkState {
    /// Its frame `seq`, if that is the one leaving paced.
    pub fn paced_for(&self, seq: u64) -> Option<&Paced> {
        self.paced.as_ref().filter(|p| p.frame.seq == seq)
    }
}

/// One session's end of the data path.
pub(crate) struct Link {
    pub viewer: SocketAddr,
    pub socket: Arc<SharedSocket>,
    pub(super) state: Mutex<LinkState>,
    /// Wakes the session task: `end` arrived, a frame waits on a full window, sends fail.
    pub wake: Notify,
}

impl Link {
    /// The state, even if a thread panicked holding it (it holds only counters and a window).
    pub fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's place on the data path, from [`DataPath::attach`]: dropping it takes the viewer
/// off (as [`DataPath::detach`] does), so that no way out of admission or a session, early
/// returns included, leaves a viewer attached and sent every frame for good.
pub(crate) struct Attached(pub(super) Arc<Link>);

impl std::ops::Deref for Attached {
    type Target = Arc<Link>;
    fn deref(&self) -> &Arc<Link> {
        &self.0
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        DataPath::detach(&self.0);
    }
}

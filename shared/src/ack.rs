//! The viewer's answer to a frame datagram, sent over UDP to the address the frame came from.
//!
//! ```text
//! seed 003 form:  "continue"            one per frame received
//!                 "end"                 the viewer leaves
//! SURV/1 form:    "continue <seq> k=<key>"   <seq>: decimal u64, the tag sequence number of
//!                                            the newest frame received (acks are cumulative)
//!                 "end k=<key>"
//!                 "hello k=<key>"            sent from the announced port right after the OK
//!                                            line, until the first frame arrives: no frame
//!                                            goes to a SURV/1 viewer before it
//! chunked SURV/1: "hello mtu=<bytes> k=<key>" instead of the plain hello: send me each frame
//!                                            as chunks ([`crate::chunk`]) of at most <bytes>
//!                                            (MIN_MTU_BYTES..=MAX_MTU_BYTES)
//!                 "continue <seq> r=<rx> k=<key>"  frames up to <seq> are accounted for
//!                                            (complete, or given up; an older one may
//!                                            still be in repair); <rx>: payload bytes
//!                                            received this session of the frames up to <seq>, mod 2^32
//!                 "continue <seq> r=<rx> l=<loss> k=<key>"  the same, from a viewer that takes
//!                                            parity chunks, to a server whose OK line said
//!                                            `fec=1`: <loss>, 0..=1000, is the share of chunks
//!                                            lost on the way lately, in thousandths; the server
//!                                            sends parity chunks for it
//!                 "continue <seq> r=<rx> [l=<loss>] p=<kbps> k=<key>"  the same, to a server
//!                                            whose OK line said `pace=1`: <kbps>, 1..=MAX_PATH_KBPS,
//!                                            is the rate its path delivered a frame's chunks at
//!                                            lately, in kbit/s (the server paces a frame's
//!                                            chunks to it: [`crate::reassembly`] measures it);
//!                                            left out while it has no measure
//!                 "nack <seq> n=<need> m=<hex> k=<key>"  frame <seq> is incomplete: it needs
//!                                            <need> (1..=128) more chunks; <hex>: which data
//!                                            chunks are missing, a bitmap (bit i = chunk i)
//!                                            written as one lowercase hex number, most
//!                                            significant digit first, no leading zeros, at
//!                                            most 32 digits
//! ```
//!
//! Only a server that advertised `mtu=` in its `OK` line is sent the chunked forms; a plain
//! `hello` (an older surv-client) keeps whole frame datagrams.
//!
//! `<key>` is the session key the server's `OK` line handed out (`key=`, 16 lowercase hex
//! digits). A SURV/1 session's datagram without its key is not the viewer's and is ignored
//! (counted as spoofed): a third party who can send from the viewer's address but never saw the
//! TCP reply cannot end or steer the session, and a port that never asked gets no frames. The
//! seed form carries no key and cannot (seed 003 sends exactly `continue` and `end`). A SURV/1
//! viewer of a server that hands out no key sends the forms without ` k=…`.
//!
//! A trailing `\r`, `\n` or NUL is tolerated (some viewers send C strings). Anything else is
//! [`AckError`]: the server counts it and ignores it.

use thiserror::Error;

use crate::chunk::{MAX_MTU_BYTES, MIN_MTU_BYTES};

/// No ack of the seed and whole-datagram forms is longer than this.
pub const MAX_ACK_BYTES: usize = 64;

/// No ack at all is longer than this (a `nack` with a full bitmap is 85 bytes); a longer
/// datagram is rejected unread.
pub const MAX_CHUNK_ACK_BYTES: usize = 96;

/// The most data chunks a `nack` can name (its bitmap's width): [`crate::chunk::MAX_CHUNKS_PER_FRAME`].
const NACK_BITS: usize = crate::chunk::MAX_CHUNKS_PER_FRAME;

/// The largest `l=`: everything lost.
pub const MAX_LOSS_PERMILLE: u16 = 1000;

/// The highest path rate a `continue` may report (`p=`, kbit/s): 100 Gbit/s.
pub const MAX_PATH_KBPS: u32 = 100_000_000;

/// One decoded ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Keep streaming. `Some(seq)`: every frame up to `seq` is accounted for (SURV/1 viewers);
    /// `None`: one frame was received (seed 003 viewers, which cannot say which).
    Continue(Option<u64>),
    /// Stop streaming to this viewer now.
    End,
    /// A SURV/1 viewer's first word from its announced port: frames may start.
    Hello,
    /// As [`Ack::Hello`], asking for each frame in chunks of at most `mtu` bytes.
    HelloChunks { mtu: u16 },
    /// A chunked session's `continue`: frames up to `seq` are accounted for; `rx_bytes` is the
    /// payload it received this session, mod 2^32; `loss`, from a viewer that takes parity
    /// chunks, the share of chunks it lost lately in thousandths (0..=[`MAX_LOSS_PERMILLE`]);
    /// `path_kbps`, to a server that paces, the rate its path delivered chunks at lately
    /// (1..=[`MAX_PATH_KBPS`]).
    Received {
        seq: u64,
        rx_bytes: u32,
        loss: Option<u16>,
        path_kbps: Option<u32>,
    },
    /// A chunked session's frame is incomplete.
    Nack(Nack),
}

/// What a `nack` says: frame `seq` needs `need` more chunks, and which data chunks it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub seq: u64,
    /// 1..=[`crate::chunk::MAX_CHUNKS_PER_FRAME`].
    pub need: u8,
    /// Bit i set: data chunk i is missing.
    pub missing: u128,
}

/// Why a datagram is not an ack.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckError {
    #[error("ack of {0} bytes is over its form's cap ({MAX_ACK_BYTES} bytes, {MAX_CHUNK_ACK_BYTES} for the chunked forms)")]
    TooLong(usize),
    #[error("not an ack (expected \"continue\", \"continue <seq>\", \"end\", \"hello\" or a chunked session's \"nack\", the SURV/1 ones with \" k=<key>\")")]
    Unknown,
}

impl Ack {
    /// Parses one datagram, with or without a session key (see [`Ack::decode_keyed`] for the
    /// key).
    pub fn decode(datagram: &[u8]) -> Result<Ack, AckError> {
        Ack::decode_keyed(datagram).map(|(ack, _)| ack)
    }

    /// Parses one datagram: the ack, and the session key it carries, if any. `hello` needs a key.
    pub fn decode_keyed(datagram: &[u8]) -> Result<(Ack, Option<u64>), AckError> {
        if datagram.len() > MAX_CHUNK_ACK_BYTES {
            return Err(AckError::TooLong(datagram.len()));
        }
        let end = datagram
            .iter()
            .rposition(|b| !matches!(b, b'\r' | b'\n' | 0))
            .map_or(0, |i| i + 1);
        let mut text = &datagram[..end];
        let mut key = None;
        if let Some(at) = text.windows(3).rposition(|w| w == b" k=") {
            key = parse_key(&text[at + 3..]);
            if key.is_none() {
                return Err(if datagram.len() > MAX_ACK_BYTES {
                    AckError::TooLong(datagram.len())
                } else {
                    AckError::Unknown
                });
            }
            text = &text[..at];
        }
        let ack = match text {
            b"continue" => Some(Ack::Continue(None)),
            b"end" => Some(Ack::End),
            b"hello" if key.is_some() => Some(Ack::Hello),
            _ => decode_numbered(text, key.is_some()),
        };
        // Only the chunked forms may pass the old forms' 64 bytes.
        let chunked = matches!(
            ack,
            Some(Ack::HelloChunks { .. } | Ack::Received { .. } | Ack::Nack(_))
        );
        if !chunked && datagram.len() > MAX_ACK_BYTES {
            return Err(AckError::TooLong(datagram.len()));
        }
        Ok((ack.ok_or(AckError::Unknown)?, key))
    }

    /// Writes the ack as it goes on the wire, without a key (the seed form, or a server that
    /// hands out none). [`Ack::Hello`] has no keyless form: it writes `hello`, which no server
    /// takes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_keyed(None)
    }

    /// Writes the ack with the session key, when there is one.
    pub fn encode_keyed(&self, key: Option<u64>) -> Vec<u8> {
        let mut out = match self {
            Ack::Continue(None) => b"continue".to_vec(),
            Ack::Continue(Some(seq)) => format!("continue {seq}").into_bytes(),
            Ack::End => b"end".to_vec(),
            Ack::Hello => b"hello".to_vec(),
            Ack::HelloChunks { mtu } => format!("hello mtu={mtu}").into_bytes(),
            Ack::Received {
                seq,
                rx_bytes,
                loss,
                path_kbps,
            } => {
                let mut text = format!("continue {seq} r={rx_bytes}");
                if let Some(loss) = loss {
                    text.push_str(&format!(" l={loss}"));
                }
                if let Some(kbps) = path_kbps {
                    text.push_str(&format!(" p={kbps}"));
                }
                text.into_bytes()
            }
            Ack::Nack(n) => format!("nack {} n={} m={:x}", n.seq, n.need, n.missing).into_bytes(),
        };
        if let Some(key) = key {
            out.extend_from_slice(format!(" k={}", format_key(key)).as_bytes());
        }
        out
    }
}

/// The forms with numbers, the key already taken off: `continue <seq>`, `continue <seq> r=<rx>`
/// (and ` l=<loss>`, ` p=<kbps>`, in that order),
/// `nack <seq> n=<need> m=<hex>`, `hello mtu=<bytes>` (only with a key).
fn decode_numbered(text: &[u8], keyed: bool) -> Option<Ack> {
    if let Some(rest) = text.strip_prefix(b"continue ") {
        let mut words = rest.split(|&b| b == b' ');
        let seq = parse_u64(words.next()?)?;
        let ack = match words.next() {
            None => Ack::Continue(Some(seq)),
            Some(word) => {
                let rx = parse_u64(word.strip_prefix(b"r=")?)?;
                let mut word = words.next();
                let loss = match word.and_then(|w| w.strip_prefix(b"l=")) {
                    None => None,
                    Some(value) => {
                        word = words.next();
                        let loss = parse_u64(value)?;
                        if loss > u64::from(MAX_LOSS_PERMILLE) {
                            return None;
                        }
                        Some(u16::try_from(loss).ok()?)
                    }
                };
                let path_kbps = match word {
                    None => None,
                    Some(word) => {
                        let kbps = parse_u64(word.strip_prefix(b"p=")?)?;
                        if kbps == 0 || kbps > u64::from(MAX_PATH_KBPS) {
                            return None;
                        }
                        Some(u32::try_from(kbps).ok()?)
                    }
                };
                Ack::Received {
                    seq,
                    rx_bytes: u32::try_from(rx).ok()?,
                    loss,
                    path_kbps,
                }
            }
        };
        return words.next().is_none().then_some(ack);
    }
    if let Some(rest) = text.strip_prefix(b"nack ") {
        let mut words = rest.split(|&b| b == b' ');
        let seq = parse_u64(words.next()?)?;
        let need = parse_u64(words.next()?.strip_prefix(b"n=")?)?;
        let missing = parse_bitmap(words.next()?.strip_prefix(b"m=")?)?;
        if words.next().is_some() || need == 0 || need > NACK_BITS as u64 {
            return None;
        }
        return Some(Ack::Nack(Nack {
            seq,
            need: u8::try_from(need).ok()?,
            missing,
        }));
    }
    let mtu = parse_u64(text.strip_prefix(b"hello mtu=")?)?;
    let range = u64::from(MIN_MTU_BYTES)..=u64::from(MAX_MTU_BYTES);
    if !keyed || !range.contains(&mtu) {
        return None;
    }
    Some(Ack::HelloChunks {
        mtu: u16::try_from(mtu).ok()?,
    })
}

/// A `nack` bitmap: 1 to 32 lowercase hex digits, no leading zeros ("0" alone is zero).
fn parse_bitmap(hex: &[u8]) -> Option<u128> {
    let digits_ok = hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex.is_empty()
        || hex.len() > NACK_BITS / 4
        || !digits_ok
        || (hex.len() > 1 && hex[0] == b'0')
    {
        return None;
    }
    hex.iter().try_fold(0u128, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u128::from(v))
    })
}

/// A session key as it is written: 16 lowercase hex digits.
pub fn format_key(key: u64) -> String {
    format!("{key:016x}")
}

/// Exactly 16 hex digits (either case).
pub(crate) fn parse_key(text: &[u8]) -> Option<u64> {
    if text.len() != 16 || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

/// Decimal digits only (no sign, no spaces), at most 20 of them, no overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ack in [
            Ack::Continue(None),
            Ack::Continue(Some(0)),
            Ack::Continue(Some(u64::MAX)),
            Ack::End,
        ] {
            assert_eq!(Ack::decode(&ack.encode()), Ok(ack));
        }
        for ack in [
            Ack::Continue(None),
            Ack::Continue(Some(u64::MAX)),
            Ack::End,
            Ack::Hello,
        ] {
            for key in [0, 1, 0xdead_beef_0123_4567, u64::MAX] {
                let wire = ack.encode_keyed(Some(key));
                assert!(wire.len() <= MAX_ACK_BYTES, "{wire:?}");
                assert_eq!(Ack::decode_keyed(&wire), Ok((ack, Some(key))));
            }
        }
        assert_eq!(
            Ack::decode_keyed(b"continue 7 k=00000000000000ff\n"),
            Ok((Ack::Continue(Some(7)), Some(255)))
        );
        assert_eq!(Ack::decode_keyed(b"end"), Ok((Ack::End, None)));
    }

    #[test]
    fn bad_keys_and_a_keyless_hello_are_rejected() {
        for bad in [
            &b"hello"[..],
            b"hello k=",
            b"hello k=123",
            b"end k=0123456789abcdef0",
            b"end k=0123456789abcdeg",
            b"end k=+123456789abcdef",
            b"continue 1 k=0123456789abcdef k=0123456789abcdef",
            b"k=0123456789abcdef",
            b"continue1 k=0123456789abcdef",
        ] {
            assert_eq!(Ack::decode_keyed(bad), Err(AckError::Unknown), "{bad:?}");
        }
    }

    #[test]
    fn seed_viewer_bytes_decode() {
        // Exactly what seed 003 sends: 'continue'.encode('utf-8') and 'end'.encode('utf-8').
        assert_eq!(Ack::decode(b"continue"), Ok(Ack::Continue(None)));
        assert_eq!(Ack::decode(b"end"), Ok(Ack::End));
        assert_eq!(Ack::decode(b"end\r\n"), Ok(Ack::End));
        assert_eq!(Ack::decode(b"continue 42\0"), Ok(Ack::Continue(Some(42))));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b""[..],
            b"continu",
            b"END",
            b"continue ",
            b"continue -1",
            b"continue 99999999999999999999999",
            b"continue 1 2",
            b"end please",
            b"\xff\xd8\xff",
        ] {
            assert_eq!(Ack::decode(bad), Err(AckError::Unknown), "{bad:?}");
        }
        assert_eq!(Ack::decode(&[b'a'; 65]), Err(AckError::TooLong(65)));
    }

    #[test]
    fn chunked_forms_round_trip_within_their_cap() {
        let full = Nack {
            seq: u64::MAX,
            need: 128,
            missing: u128::MAX,
        };
        for ack in [
            Ack::HelloChunks { mtu: MIN_MTU_BYTES },
            Ack::HelloChunks { mtu: 1200 },
            Ack::HelloChunks { mtu: MAX_MTU_BYTES },
            Ack::Received {
                seq: 0,
                rx_bytes: 0,
                loss: None,
                path_kbps: None,
            },
            Ack::Received {
                seq: u64::MAX,
                rx_bytes: u32::MAX,
                loss: None,
                path_kbps: None,
            },
            Ack::Received {
                seq: 5,
                rx_bytes: 7,
                loss: Some(0),
                path_kbps: None,
            },
            Ack::Received {
                seq: 5,
                rx_bytes: 7,
                loss: None,
                path_kbps: Some(1),
            },
            Ack::Received {
                seq: u64::MAX,
                rx_bytes: u32::MAX,
                loss: Some(MAX_LOSS_PERMILLE),
                path_kbps: Some(MAX_PATH_KBPS),
            },
            Ack::Nack(Nack {
                seq: 3,
                need: 1,
                missing: 0b100,
            }),
            Ack::Nack(Nack {
                seq: 3,
                need: 2,
                missing: 0,
            }),
            Ack::Nack(full),
        ] {
            let wire = ack.encode_keyed(Some(u64::MAX));
            assert!(wire.len() <= MAX_CHUNK_ACK_BYTES, "{wire:?}");
            assert_eq!(Ack::decode_keyed(&wire), Ok((ack, Some(u64::MAX))));
        }
        assert_eq!(
            Ack::Nack(full).encode_keyed(Some(1)).len(),
            85,
            "the longest ack"
        );
        assert_eq!(
            Ack::decode_keyed(b"nack 17 n=2 m=24 k=00000000000000ff"),
            Ok((
                Ack::Nack(Nack {
                    seq: 17,
                    need: 2,
                    missing: (1 << 2) | (1 << 5),
                }),
                Some(255)
            ))
        );
        assert_eq!(
            Ack::decode_keyed(b"continue 9 r=4096 k=00000000000000ff\n"),
            Ok((
                Ack::Received {
                    seq: 9,
                    rx_bytes: 4096,
                    loss: None,
                    path_kbps: None,
                },
                Some(255)
            ))
        );
        assert_eq!(
            Ack::decode_keyed(b"continue 9 r=4096 l=31 k=00000000000000ff"),
            Ok((
                Ack::Received {
                    seq: 9,
                    rx_bytes: 4096,
                    loss: Some(31),
                    path_kbps: None,
                },
                Some(255)
            ))
        );
        assert_eq!(
            Ack::decode_keyed(b"continue 9 r=4096 l=31 p=25000 k=00000000000000ff"),
            Ok((
                Ack::Received {
                    seq: 9,
                    rx_bytes: 4096,
                    loss: Some(31),
                    path_kbps: Some(25_000),
                },
                Some(255)
            ))
        );
        assert_eq!(
            Ack::decode_keyed(b"continue 9 r=4096 p=25000 k=00000000000000ff"),
            Ok((
                Ack::Received {
                    seq: 9,
                    rx_bytes: 4096,
                    loss: None,
                    path_kbps: Some(25_000),
                },
                Some(255)
            ))
        );
    }

    #[test]
    fn hostile_chunked_acks_are_rejected() {
        for bad in [
            &b"hello mtu=1200"[..],               // no key
            b"hello mtu=799 k=0123456789abcdef",  // under the floor
            b"hello mtu=8973 k=0123456789abcdef", // over the ceiling
            b"hello mtu= k=0123456789abcdef",
            b"hello mtu=+1200 k=0123456789abcdef",
            b"hello mtu=1200 x k=0123456789abcdef",
            b"continue 1 r=4294967296 k=0123456789abcdef", // over u32
            b"continue 1 r= k=0123456789abcdef",
            b"continue 1 r=5 r=5 k=0123456789abcdef",
            b"continue 1 x=5 k=0123456789abcdef",
            b"continue 1  r=5 k=0123456789abcdef",
            b"continue 1 r=5 l=1001 k=0123456789abcdef", // over everything
            b"continue 1 r=5 l= k=0123456789abcdef",
            b"continue 1 r=5 l=-1 k=0123456789abcdef",
            b"continue 1 r=5 l=3 l=3 k=0123456789abcdef",
            b"continue 1 l=3 r=5 k=0123456789abcdef",
            b"continue 1 r=5 l=3 x k=0123456789abcdef",
            b"continue 1 r=5 p=0 k=0123456789abcdef", // no rate
            b"continue 1 r=5 p=100000001 k=0123456789abcdef", // over 100 Gbit/s
            b"continue 1 r=5 p= k=0123456789abcdef",
            b"continue 1 r=5 p=3 l=3 k=0123456789abcdef", // out of order
            b"continue 1 r=5 p=3 p=3 k=0123456789abcdef",
            b"continue 1 r=5 l=3 p=3 x k=0123456789abcdef",
            b"nack 1 n=0 m=1 k=0123456789abcdef", // needs nothing
            b"nack 1 n=129 m=1 k=0123456789abcdef", // more than a frame holds
            b"nack 1 n=99999999999999999999999 m=1 k=0123456789abcdef",
            b"nack 1 n=1 m= k=0123456789abcdef",
            b"nack 1 n=1 m=01 k=0123456789abcdef", // leading zero
            b"nack 1 n=1 m=1F k=0123456789abcdef", // upper case
            b"nack 1 n=1 m=g k=0123456789abcdef",
            b"nack 1 n=1 m=100000000000000000000000000000000 k=0123456789abcdef", // 33 digits
            b"nack 1 m=1 n=1 k=0123456789abcdef",
            b"nack 1 n=1 k=0123456789abcdef",
            b"nack 1 n=1 m=1 extra k=0123456789abcdef",
            b"nack n=1 m=1 k=0123456789abcdef",
        ] {
            // Garbage past the old forms' cap is refused as too long.
            let want = if bad.len() > MAX_ACK_BYTES {
                AckError::TooLong(bad.len())
            } else {
                AckError::Unknown
            };
            assert_eq!(Ack::decode_keyed(bad), Err(want), "{bad:?}");
        }
        // The old forms keep their 64-byte cap; nothing passes 96.
        let mut long_end = b"end k=0123456789abcdef".to_vec();
        long_end.resize(65, b'\n');
        assert_eq!(Ack::decode_keyed(&long_end), Err(AckError::TooLong(65)));
        let mut padded = Ack::Nack(Nack {
            seq: 1,
            need: 1,
            missing: 1,
        })
        .encode_keyed(Some(1));
        padded.resize(96, 0);
        assert!(Ack::decode_keyed(&padded).is_ok());
        padded.push(0);
        assert_eq!(Ack::decode_keyed(&padded), Err(AckError::TooLong(97)));
    }
}

//! Unit tests of the file source: the JPEG splitter ([`split`]) and the source against real
//! files and ffmpeg ([`sources`]).

mod sources;
mod split;

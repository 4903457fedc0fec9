//! The detector: ONNX Runtime (its library loaded at run time, once per process) running the
//! converted CenterNet, and the pictures made into its input.
//!
//! The model takes `[1, 512, 512, 3]` float RGB, 0–255, the whole frame stretched to a square
//! (as it was trained and as `@vladmandic/human` feeds it), and gives its 100 best candidates as
//! rows `x1, y1, x2, y2, score, class` in input pixels. One session is shared by every camera,
//! on one core (`intra_threads = 1`): cameras take turns.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::TensorRef;

use super::{Detection, ModelPaths, LABELS};
use crate::jpeg::JpegReader;

/// The model's input is `SIDE`x`SIDE` RGB.
pub const SIDE: usize = 512;
/// Values in a row of the output: x1, y1, x2, y2, score, class.
const ROW: usize = 6;
/// The output the rows are read from.
const OUTPUT: &str = "tower_0/detections";
/// Two boxes of one class overlapping more than this (intersection over union) are one object.
const SAME_OBJECT_IOU: f32 = 0.5;
/// Largest picture decoded (before scaling), as for every decoder in the server.
const MAX_PIXELS: u64 = crate::frame::MAX_DECODED_PIXELS;

/// The runtime library this process loaded (ONNX Runtime can be loaded once), or why not.
static RUNTIME: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The loaded model.
pub struct Model {
    session: Mutex<Session>,
    input: String,
    path: PathBuf,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({})", self.path.display())
    }
}

/// `path` from the current folder (as the user wrote it relative to where they run the
/// server), links and `..` resolved where it exists, so that one file has one name.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn load_runtime(path: &Path) -> Result<(), String> {
    let wanted = absolute(path);
    let loaded = RUNTIME.get_or_init(|| {
        if !wanted.is_file() {
            return Err(format!(
                "no ONNX Runtime library at {} (scripts/setup.sh installs it; or --detect-runtime PATH)",
                wanted.display()
            ));
        }
        let builder = ort::init_from(&wanted)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", wanted.display()))?;
        let _ = builder.with_name("surv-detect").commit();
        Ok(wanted.clone())
    });
    match loaded {
        Ok(at) if *at == wanted => Ok(()),
        Ok(at) => Err(format!(
            "ONNX Runtime is loaded from {} already; {} cannot be loaded beside it",
            at.display(),
            wanted.display()
        )),
        Err(e) => Err(e.clone()),
    }
}

impl Model {
    /// Loads the runtime (once per process) and the model. The error says what is missing and
    /// how to get it.
    pub fn load(paths: &ModelPaths) -> Result<Model, String> {
        load_runtime(&paths.runtime)?;
        let path = absolute(&paths.model);
        if !path.is_file() {
            return Err(format!(
                "no model at {} (scripts/setup.sh makes it; or --detect-model PATH)",
                path.display()
            ));
        }
        let session = Session::builder()
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&path))
            .map_err(|e| format!("loading the model {}: {e}", path.display()))?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| format!("the model {} has no input", path.display()))?;
        if !session.outputs().iter().any(|o| o.name() == OUTPUT) {
            return Err(format!(
                "the model {} has no output {OUTPUT:?}: not the CenterNet setup.sh makes",
                path.display()
            ));
        }
        Ok(Model {
            session: Mutex::new(session),
            input,
            path,
        })
    }

    /// Runs the model on `input` (from [`Prepare`]) and returns every candidate scoring at
    /// least `threshold`, best first, overlapping boxes of one class merged.
    pub fn detect(&self, input: &[f32], threshold: f32) -> Result<Vec<Detection>, String> {
        if input.len() != SIDE * SIDE * 3 {
            return Err(format!(
                "input of {} values, not {}",
                input.len(),
                SIDE * SIDE * 3
            ));
        }
        let tensor = TensorRef::from_array_view(([1usize, SIDE, SIDE, 3], input))
            .map_err(|e| e.to_string())?;
        // A panic elsewhere while holding it leaves the session as usable as before.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| format!("running the model: {e}"))?;
        let rows = outputs
            .get(OUTPUT)
            .ok_or("the model gave no detections")?
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?
            .1;
        Ok(decode_rows(rows, threshold))
    }
}

/// The model's rows (`x1, y1, x2, y2, score, class` in input pixels) as detections with boxes
/// as fractions of the picture: those scoring at least `threshold`, best first, a box of a
/// class that overlaps a better one of the same class dropped.
pub fn decode_rows(rows: &[f32], threshold: f32) -> Vec<Detection> {
    let side = SIDE as f32;
    let mut found: Vec<Detection> = rows
        .chunks_exact(ROW)
        .filter(|r| r[4] >= threshold && r[4].is_finite())
        .filter_map(|r| {
            let class = r[5];
            if !(0.0..LABELS.len() as f32).contains(&class) || class.fract() != 0.0 {
                return None;
            }
            let x1 = (r[0] / side).clamp(0.0, 1.0);
            let y1 = (r[1] / side).clamp(0.0, 1.0);
            let x2 = (r[2] / side).clamp(0.0, 1.0);
            let y2 = (r[3] / side).clamp(0.0, 1.0);
            (x2 > x1 && y2 > y1).then_some(Detection {
                class: class as usize,
                score: r[4],
                region: [x1, y1, x2 - x1, y2 - y1],
            })
        })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(found.len());
    for d in found {
        if !kept
            .iter()
            .any(|k| k.class == d.class && iou(&k.region, &d.region) > SAME_OBJECT_IOU)
        {
            kept.push(d);
        }
    }
    kept
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// Makes frames into the model's input, keeping its buffers and JPEG decoder across frames.
pub struct Prepare {
    reader: JpegReader,
    rgb: Vec<u8>,
    input: Vec<f32>,
}

impl Default for Prepare {
    fn default() -> Prepare {
        Prepare {
            reader: JpegReader::new(),
            rgb: Vec::new(),
            input: vec![0.0; SIDE * SIDE * 3],
        }
    }
}

impl Prepare {
    /// Decodes `jpeg` (at the smallest scale that still covers the model's input, so a
    /// 1920x1080 frame is decoded at 960x540) and stretches it into the input, which it returns.
    pub fn jpeg(&mut self, jpeg: &[u8]) -> Result<&[f32], String> {
        let rgb = &mut self.rgb;
        let (w, h) = self.reader.run_for_reason(|d| {
            let header = d.read_header(jpeg).map_err(|e| e.to_string())?;
            if header.width == 0
                || header.height == 0
                || (header.width as u64).saturating_mul(header.height as u64) > MAX_PIXELS
            {
                return Err(format!("unusable size {}x{}", header.width, header.height));
            }
            let factor = turbojpeg::Decompressor::supported_scaling_factors()
                .into_iter()
                .filter(|f| f.num() <= f.denom())
                .filter(|f| f.scale(header.width) >= SIDE && f.scale(header.height) >= SIDE)
                .min_by(|a, b| (a.num() * b.denom()).cmp(&(b.num() * a.denom())))
                .unwrap_or(turbojpeg::ScalingFactor::ONE);
            d.set_scaling_factor(factor).map_err(|e| e.to_string())?;
            let scaled = header.scaled(factor);
            let (w, h) = (scaled.width, scaled.height);
            rgb.resize(w * h * 3, 0);
            let image = turbojpeg::Image {
                pixels: &mut rgb[..],
                width: w,
                pitch: w * 3,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            };
            d.decompress(jpeg, image).map_err(|e| e.to_string())?;
            Ok((w, h))
        })?;
        stretch(&self.rgb[..w * h * 3], w, h, &mut self.input);
        Ok(&self.input)
    }
}

/// Bilinear resampling of `rgb` (`w`x`h`, packed RGB) to `SIDE`x`SIDE` floats, 0–255, pixel
/// centres aligned as TensorFlow's `resize` does.
pub fn stretch(rgb: &[u8], w: usize, h: usize, out: &mut [f32]) {
    let axis = |n: usize| -> Vec<(usize, usize, f32)> {
        let scale = n as f32 / SIDE as f32;
        (0..SIDE)
            .map(|i| {
                let at = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let lo = (at as usize).min(n - 1);
                let hi = (lo + 1).min(n - 1);
                (lo, hi, at - lo as f32)
            })
            .collect()
    };
    let (xs, ys) = (axis(w), axis(h));
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (row0, row1) = (&rgb[y0 * w * 3..][..w * 3], &rgb[y1 * w * 3..][..w * 3]);
        let line = &mut out[oy * SIDE * 3..][..SIDE * 3];
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top =
                    f32::from(row0[x0 * 3 + c]) * (1.0 - fx) + f32::from(row0[x1 * 3 + c]) * fx;
                let bottom =
                    f32::from(row1[x0 * 3 + c]) * (1.0 - fx) + f32::from(row1[x1 * 3 + c]) * fx;
                line[ox * 3 + c] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

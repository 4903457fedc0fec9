use std::time::Duration;

use super::model::{decode_rows, stretch, Model, Prepare, SIDE};
use super::presence::{Change, Presence};
use super::*;

const PERSON: usize = 0;
const CAT: usize = 15;

#[test]
fn labels_are_coco_names_checked() {
    assert_eq!(parse_labels("person,car"), Ok(vec![0, 2]));
    assert_eq!(
        parse_labels(" Person , traffic light,person"),
        Ok(vec![0, 9])
    );
    assert_eq!(parse_labels("traffic_light"), Ok(vec![9]));
    assert_eq!(LABELS[41], "cup");
    assert!(parse_labels("persn").unwrap_err().contains("\"persn\""));
    assert!(parse_labels(",,").is_err());
    assert!(parse_labels("").is_err());
}

/// Rows as the model gives them: x1, y1, x2, y2 in input pixels, score, class.
fn row(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class: f32) -> [f32; 6] {
    [x1, y1, x2, y2, score, class]
}

#[test]
fn rows_become_boxes_of_the_picture_over_the_threshold_one_per_object() {
    let rows: Vec<f32> = [
        row(128.0, 0.0, 384.0, 512.0, 0.30, 0.0), // under the threshold
        row(0.0, 0.0, 256.0, 256.0, 0.60, 0.0),
        row(8.0, 8.0, 256.0, 256.0, 0.50, 0.0), // the same person, weaker: dropped
        row(8.0, 8.0, 256.0, 256.0, 0.45, 15.0), // a cat in the same place: kept
        row(300.0, 300.0, 400.0, 400.0, 0.40, 0.0), // a second person
    ]
    .concat();
    let found = decode_rows(&rows, 0.35);
    let classes: Vec<(usize, f32)> = found.iter().map(|d| (d.class, d.score)).collect();
    assert_eq!(classes, vec![(PERSON, 0.60), (CAT, 0.45), (PERSON, 0.40)]);
    assert_eq!(found[0].region, [0.0, 0.0, 0.5, 0.5]);
    assert_eq!(found[0].label(), "person");
    let [x, y, w, h] = found[2].region;
    assert!((x - 300.0 / 512.0).abs() < 1e-6 && (w - 100.0 / 512.0).abs() < 1e-6);
    assert!((y - 300.0 / 512.0).abs() < 1e-6 && (h - 100.0 / 512.0).abs() < 1e-6);
}

#[test]
fn unusable_rows_are_dropped_not_a_panic() {
    let rows: Vec<f32> = [
        row(0.0, 0.0, 10.0, 10.0, f32::NAN, 0.0),
        row(0.0, 0.0, 10.0, 10.0, 0.9, 80.0),
        row(0.0, 0.0, 10.0, 10.0, 0.9, -1.0),
        row(0.0, 0.0, 10.0, 10.0, 0.9, 2.5),
        row(10.0, 10.0, 10.0, 20.0, 0.9, 0.0),       // no width
        row(-50.0, -50.0, 9000.0, 9000.0, 0.9, 2.0), // clamped to the picture
    ]
    .concat();
    let found = decode_rows(&rows, 0.35);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].region, [0.0, 0.0, 1.0, 1.0]);
    // A short output (not a whole row) is no row.
    assert!(decode_rows(&[0.0, 0.0, 1.0], 0.0).is_empty());
}

#[test]
fn stretch_keeps_what_is_where() {
    // 100x50: the left half red, the right half blue.
    let (w, h) = (100, 50);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let px = &mut rgb[(y * w + x) * 3..][..3];
            px.copy_from_slice(if x < w / 2 {
                &[255, 0, 0]
            } else {
                &[0, 0, 255]
            });
        }
    }
    let mut out = vec![0.0; SIDE * SIDE * 3];
    stretch(&rgb, w, h, &mut out);
    let at = |x: usize, y: usize| &out[(y * SIDE + x) * 3..][..3];
    assert_eq!(at(10, 10), &[255.0, 0.0, 0.0]);
    assert_eq!(at(SIDE - 1, SIDE - 1), &[0.0, 0.0, 255.0]);
    assert_eq!(at(SIDE / 4, SIDE - 1), &[255.0, 0.0, 0.0]);
    // The edge between them is blended, in the middle.
    let mid = at(SIDE / 2, 0);
    assert!(mid[0] > 0.0 && mid[2] > 0.0, "{mid:?}");
}

fn seen(class: usize, score: f32) -> Detection {
    Detection {
        class,
        score,
        region: [0.1, 0.2, 0.3, 0.4],
    }
}

#[test]
fn one_presence_through_a_flicker_ended_after_the_hold() {
    let mut p = Presence::new(Duration::from_secs(2));
    let start = p.analysed(1_000_000, &[seen(PERSON, 0.5), seen(PERSON, 0.4)]);
    assert_eq!(
        start,
        vec![
            Change::Start {
                class: PERSON,
                at_us: 1_000_000,
                score: 0.5,
                region: [0.1, 0.2, 0.3, 0.4]
            },
            Change::Count {
                class: PERSON,
                count: 2
            }
        ]
    );
    // One frame without (a flicker), then seen again: no end, a count each time it changes.
    assert_eq!(p.analysed(1_500_000, &[]), vec![]);
    assert_eq!(
        p.analysed(2_000_000, &[seen(PERSON, 0.7)]),
        vec![Change::Count {
            class: PERSON,
            count: 1
        }]
    );
    assert_eq!(p.tick(3_999_999), vec![]);
    assert_eq!(p.present().len(), 1);
    let end = p.tick(4_000_000);
    assert_eq!(
        end,
        vec![
            Change::End {
                class: PERSON,
                start_us: 1_000_000,
                end_us: 2_000_000,
                peak: 0.7,
                region: [0.1, 0.2, 0.3, 0.4]
            },
            Change::Count {
                class: PERSON,
                count: 0
            }
        ]
    );
    assert!(p.present().is_empty());
    assert_eq!(p.tick(9_000_000), vec![]);
}

#[test]
fn labels_come_and_go_on_their_own_and_finish_ends_all() {
    let mut p = Presence::new(Duration::from_secs(1));
    p.analysed(0, &[seen(CAT, 0.5)]);
    p.analysed(500_000, &[seen(PERSON, 0.5), seen(CAT, 0.5)]);
    let ends = p.analysed(1_600_000, &[seen(PERSON, 0.5)]);
    assert!(
        matches!(
            ends.as_slice(),
            [
                Change::End {
                    class: CAT,
                    end_us: 500_000,
                    ..
                },
                Change::Count {
                    class: CAT,
                    count: 0
                }
            ]
        ),
        "{ends:?}"
    );
    let all = p.finish();
    assert!(
        matches!(
            all.as_slice(),
            [
                Change::End {
                    class: PERSON,
                    start_us: 500_000,
                    end_us: 1_600_000,
                    ..
                },
                Change::Count { .. }
            ]
        ),
        "{all:?}"
    );
    assert!(p.finish().is_empty());
}

#[test]
fn a_bad_jpeg_is_an_error_not_a_panic() {
    let mut prepare = Prepare::default();
    assert!(prepare.jpeg(b"not a jpeg").is_err());
    assert!(prepare.jpeg(&[]).is_err());
    // It still works after.
    let photo = surv_tests::photo("chelsea.jpg");
    assert_eq!(prepare.jpeg(&photo).unwrap().len(), SIDE * SIDE * 3);
    for (what, broken) in surv_tests::fixtures::broken_jpegs(&photo) {
        let _ = prepare
            .jpeg(&broken)
            .map_err(|e| assert!(!e.is_empty(), "{what}"));
    }
}

/// The model `scripts/setup.sh` installs, on real photographs: a person in the astronaut's,
/// none in the cat's or the coffee's at the default threshold. Fails where setup did not run.
#[test]
fn the_model_sees_the_astronaut_and_no_person_in_the_cat() {
    // The test crate's paths (its own copy of this crate's types).
    let theirs = surv_tests::detect_model();
    let paths = ModelPaths {
        runtime: theirs.runtime,
        model: theirs.model,
    };
    let model = Model::load(&paths)
        .unwrap_or_else(|e| panic!("the detection model is needed (bash scripts/setup.sh): {e}"));
    let mut prepare = Prepare::default();
    let mut people = |name: &str| -> Vec<Detection> {
        let input = prepare.jpeg(&surv_tests::photo(name)).unwrap();
        let found = model.detect(input, DEFAULT_THRESHOLD).unwrap();
        found.into_iter().filter(|d| d.class == PERSON).collect()
    };
    let astronaut = people("astronaut.jpg");
    assert_eq!(astronaut.len(), 1, "{astronaut:?}");
    // She stands in the middle of the picture, from near its top to its bottom.
    let [x, y, w, h] = astronaut[0].region;
    assert!(x < 0.5 && x + w > 0.5 && h > 0.5, "{astronaut:?}");
    assert!(y < 0.3, "{astronaut:?}");
    assert!(people("chelsea.jpg").is_empty());
    assert!(people("coffee.jpg").is_empty());
}

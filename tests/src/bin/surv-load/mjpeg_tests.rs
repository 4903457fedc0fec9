use super::*;

fn part(boundary: &str, jpeg: &[u8]) -> Vec<u8> {
    let mut p = format!(
        "--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    )
    .into_bytes();
    p.extend_from_slice(jpeg);
    p.extend_from_slice(b"\r\n");
    p
}

fn parts_of(reader: &mut PartReader, bytes: &[u8], step: usize) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    for piece in bytes.chunks(step) {
        reader
            .feed(piece, &mut |len, prefix| got.push((len, prefix.to_vec())))
            .unwrap();
    }
    got
}

#[test]
fn head_gives_boundary_and_coding() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: multipart/x-mixed-replace; boundary=surv-mjpeg-part\r\ntransfer-encoding: chunked\r\n\r\nrest";
    assert_eq!(response_head(&head[..20]), Ok(None));
    let h = response_head(head).unwrap().unwrap();
    assert_eq!(h.boundary, "surv-mjpeg-part");
    assert!(h.chunked);
    assert_eq!(&head[h.len..], b"rest");
    assert!(response_head(b"HTTP/1.1 401 Unauthorized\r\n\r\n").is_err());
}

#[test]
fn parts_by_length_across_any_split_and_chunking() {
    let big = vec![0xAB; 300];
    let mut body = part("B", b"\xFF\xD8first");
    body.extend(part("B", &big));
    for step in [1, 7, 1000] {
        let got = parts_of(&mut PartReader::new("B", false, false), &body, step);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (7, b"\xFF\xD8first".to_vec()));
        assert_eq!(got[1], (300, vec![0xAB; PREFIX_BYTES]));
        // The same body in chunks of 5 bytes.
        let mut chunked = Vec::new();
        for c in body.chunks(5) {
            chunked.extend(format!("{:x}\r\n", c.len()).bytes());
            chunked.extend_from_slice(c);
            chunked.extend(b"\r\n");
        }
        let again = parts_of(&mut PartReader::new("B", true, false), &chunked, step);
        assert_eq!(again, got);
    }
}

#[test]
fn resync_skips_a_partial_part_strict_refuses_it() {
    let mut body = b"tail of a JPEG\r\n\r\n".to_vec();
    body.extend(part("B", b"next"));
    let got = parts_of(&mut PartReader::new("B", false, true), &body, 3);
    assert_eq!(got, vec![(4, b"next".to_vec())]);
    let mut strict = PartReader::new("B", false, false);
    assert!(strict.feed(&body, &mut |_, _| {}).is_err());
}

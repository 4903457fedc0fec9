//! Python literals as `str()` writes them, for the OAK's detection header: lists (nested),
//! ints, floats (`29.87`, `1e-05`, `inf`, `nan`), strings in single or double quotes with
//! their escapes, `True`, `False` and `None`. Only what `str()` of such a list produces; no
//! dicts, tuples or sets.
//!
//! Sans-I/O and bounded: [`parse`] reads one literal from the start of a byte slice and says
//! where it ended, or that the slice ended first ([`PyError::Incomplete`]: the caller buffers
//! more, up to its own cap), or why the bytes cannot be one ([`PyError::Invalid`]). Lists may
//! nest [`MAX_DEPTH`] deep and hold [`MAX_ITEMS`] values in all; everything it allocates is
//! bounded by the input's length. Only ASCII is accepted: the OAK encodes the header with
//! `bytes(header, encoding='ascii')`, so any other byte is not its header.

/// Lists nested deeper than this are refused (the OAK's go three deep: the detections, an
/// entry, its box).
pub const MAX_DEPTH: usize = 8;

/// Values in one literal at most, all lists' items counted.
pub const MAX_ITEMS: usize = 1024;

/// A Python value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An int; one beyond `i64` saturates (`str()` writes any size).
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    List(Vec<Value>),
}

impl Value {
    /// The value as a number, an int or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// Why no literal came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PyError {
    /// The bytes ended inside the literal: read more.
    #[error("the literal is cut short")]
    Incomplete,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads one literal from the start of `input`: the value and how many bytes it took.
pub fn parse(input: &[u8]) -> Result<(Value, usize), PyError> {
    let mut p = Parser {
        input,
        at: 0,
        items: 0,
    };
    let value = p.value(0)?;
    Ok((value, p.at))
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
    items: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Result<u8, PyError> {
        match self.input.get(self.at) {
            Some(&b) if b.is_ascii() => Ok(b),
            Some(_) => Err(PyError::Invalid("a byte that is not ASCII")),
            None => Err(PyError::Incomplete),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, PyError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(PyError::Invalid("too many values"));
        }
        match self.peek()? {
            b'[' => self.list(depth + 1),
            b'\'' | b'"' => self.string(),
            b'-' | b'0'..=b'9' | b'i' | b'n' => self.number(),
            b'T' => self.word("True", Value::Bool(true)),
            b'F' => self.word("False", Value::Bool(false)),
            b'N' => self.word("None", Value::None),
            _ => Err(PyError::Invalid("not a Python literal")),
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, PyError> {
        if depth > MAX_DEPTH {
            return Err(PyError::Invalid("lists nested too deep"));
        }
        self.at += 1; // '['
        let mut items = Vec::new();
        self.spaces()?;
        if self.peek()? == b']' {
            self.at += 1;
            return Ok(Value::List(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.spaces()?;
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.spaces()?;
                }
                b']' => {
                    self.at += 1;
                    return Ok(Value::List(items));
                }
                _ => return Err(PyError::Invalid("a list item not followed by ',' or ']'")),
            }
        }
    }

    /// Spaces inside a list (`str()` writes one after each comma).
    fn spaces(&mut self) -> Result<(), PyError> {
        while self.peek()? == b' ' {
            self.at += 1;
        }
        Ok(())
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, PyError> {
        let word = word.as_bytes();
        let rest = &self.input[self.at..];
        let n = rest.len().min(word.len());
        if rest[..n] != word[..n] {
            return Err(PyError::Invalid("not a Python literal"));
        }
        if n < word.len() {
            return Err(PyError::Incomplete);
        }
        self.at += word.len();
        Ok(value)
    }

    /// An int or a float: the longest run of the characters they are written with, then
    /// judged whole (so `1.5.5` or `--1` is refused, not read in part).
    fn number(&mut self) -> Result<Value, PyError> {
        let start = self.at;
        loop {
            match self.input.get(self.at) {
                Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+') => {
                    self.at += 1
                }
                Some(_) => break,
                None => return Err(PyError::Incomplete),
            }
        }
        let token = &self.input[start..self.at];
        if let Some(int) = int(token) {
            return Ok(Value::Int(int));
        }
        float(token)
            .map(Value::Float)
            .ok_or(PyError::Invalid("not a number"))
    }

    fn string(&mut self) -> Result<Value, PyError> {
        let quote = self.peek()?;
        self.at += 1;
        let mut s = String::new();
        loop {
            let b = self.peek()?;
            self.at += 1;
            match b {
                b if b == quote => return Ok(Value::Str(s)),
                b'\\' => {
                    let e = self.peek()?;
                    self.at += 1;
                    match e {
                        b'\\' | b'\'' | b'"' => s.push(char::from(e)),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'x' => s.push(self.hex(2)?),
                        b'u' => s.push(self.hex(4)?),
                        b'U' => s.push(self.hex(8)?),
                        _ => return Err(PyError::Invalid("an unknown escape in a string")),
                    }
                }
                b if b.is_ascii_graphic() || b == b' ' => s.push(char::from(b)),
                _ => return Err(PyError::Invalid("a control character in a string")),
            }
        }
    }

    /// The code point of an escape's `digits` hex digits.
    fn hex(&mut self, digits: usize) -> Result<char, PyError> {
        let mut code = 0u32;
        for _ in 0..digits {
            let d = char::from(self.peek()?)
                .to_digit(16)
                .ok_or(PyError::Invalid("a bad hex escape in a string"))?;
            self.at += 1;
            code = code * 16 + d;
        }
        char::from_u32(code).ok_or(PyError::Invalid("an escape that is no character"))
    }
}

/// `-?[0-9]+`, saturated to `i64`.
fn int(token: &[u8]) -> Option<i64> {
    let (negative, digits) = match token.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, token),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().fold(0i64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// What `repr(float)` writes: `29.87`, `1e-05`, `1.5e+16`, `inf`, `-inf`, `nan`.
fn float(token: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(token).ok()?;
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let special = matches!(unsigned, "inf" | "nan");
    // Rust would also take `infinity`, `+1`, `.5` or `1.`; Python's repr writes none of them
    // but `1.`, which it never does either.
    let plain = unsigned.starts_with(|c: char| c.is_ascii_digit())
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-' | '+'));
    if !special && !plain {
        return None;
    }
    text.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` parsed whole (followed by a space, which ends a number as padding does).
    fn ok(text: &str) -> Value {
        let padded = format!("{text} ");
        let (v, used) = parse(padded.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(used, text.len(), "{text}");
        v
    }

    fn list(items: Vec<Value>) -> Value {
        Value::List(items)
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    /// What `str(data_to_send)` gives in the YOLO tracker, verbatim from Python 3.
    const TWO_PEOPLE: &str = "[['ID 1', 320, 240, 'person', [100, 100, 300, 400], [0, 0, 0, 0], 29.87], ['ID 12', 50, 60, 'person', [0, 10, 100, 110], [1, 0, 2, 0], 1e-05]]";

    #[test]
    fn reads_what_str_of_the_oak_lists_gives() {
        let v = ok(TWO_PEOPLE);
        let Value::List(entries) = v else {
            panic!("not a list")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            list(vec![
                s("ID 1"),
                Value::Int(320),
                Value::Int(240),
                s("person"),
                list(vec![
                    Value::Int(100),
                    Value::Int(100),
                    Value::Int(300),
                    Value::Int(400)
                ]),
                list(vec![Value::Int(0); 4]),
                Value::Float(29.87),
            ])
        );
        let Value::List(e1) = &entries[1] else {
            panic!()
        };
        assert_eq!(e1[6], Value::Float(1e-05));
        assert_eq!(ok("[]"), list(vec![]));
        assert_eq!(ok("[0, 0, 0, 0]"), list(vec![Value::Int(0); 4]));
        assert_eq!(
            ok("[['ID 3', 150, 150]]"),
            list(vec![list(vec![
                s("ID 3"),
                Value::Int(150),
                Value::Int(150)
            ])])
        );
        assert_eq!(ok("17"), Value::Int(17));
        assert_eq!(ok("[True, False, None]"), {
            list(vec![Value::Bool(true), Value::Bool(false), Value::None])
        });
    }

    #[test]
    fn floats_as_repr_writes_them() {
        for (text, want) in [
            ("29.87", 29.87),
            ("-0.5", -0.5),
            ("1e-05", 1e-05),
            ("1.5e+16", 1.5e16),
            ("inf", f64::INFINITY),
            ("-inf", f64::NEG_INFINITY),
        ] {
            assert_eq!(ok(text), Value::Float(want), "{text}");
        }
        let Value::Float(nan) = ok("nan") else {
            panic!()
        };
        assert!(nan.is_nan());
        for bad in ["1.5.5x", "infinity", "--1", "1e", "n", "0x10", "12abc"] {
            // Followed by a space so that the token is complete.
            let text = format!("{bad} ");
            assert!(
                matches!(parse(text.as_bytes()), Err(PyError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn strings_with_either_quote_and_escapes() {
        assert_eq!(ok(r#""it's""#), s("it's"));
        assert_eq!(ok(r"'say \'hi\''"), s("say 'hi'"));
        assert_eq!(ok(r"'a\\b\n\t\x41\u00e9'"), s("a\\b\n\tAé"));
        assert_eq!(ok(r#"'"'"#), s("\""));
        for bad in [r"'\q'", r"'\xZZ'", r"'\ud800'", "'tab\there'"] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(PyError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for whole in [
            TWO_PEOPLE,
            "[]",
            r"['it\'s', True, None, -inf, 1e-05, [[]]]",
            "[\"x\", 'y', False]",
        ] {
            for end in 0..whole.len() {
                assert_eq!(
                    parse(&whole.as_bytes()[..end]),
                    Err(PyError::Incomplete),
                    "{:?}",
                    &whole[..end]
                );
            }
        }
        // A number is whole only once something follows it.
        assert_eq!(parse(b"123"), Err(PyError::Incomplete));
        assert_eq!(parse(b"123 "), Ok((Value::Int(123), 3)));
    }

    #[test]
    fn hostile_input_is_refused_not_a_panic() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            parse(deep.as_bytes()),
            Err(PyError::Invalid("lists nested too deep"))
        );
        let deepest = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(ok(&deepest), {
            let mut v = list(vec![]);
            for _ in 1..MAX_DEPTH {
                v = list(vec![v]);
            }
            v
        });
        // A million brackets: refused at the ninth, not a stack overflow.
        let flood = vec![b'['; 1_000_000];
        assert!(matches!(parse(&flood), Err(PyError::Invalid(_))));
        let many = format!("[{}0]", "0, ".repeat(MAX_ITEMS));
        assert_eq!(
            parse(many.as_bytes()),
            Err(PyError::Invalid("too many values"))
        );
        // Huge numbers saturate or become infinite; they never overflow.
        let huge = "9".repeat(400);
        assert_eq!(ok(&format!("[{huge}]")), list(vec![Value::Int(i64::MAX)]));
        assert_eq!(ok(&format!("[-{huge}]")), list(vec![Value::Int(-i64::MAX)]));
        assert_eq!(
            ok(&format!("[{huge}.5]")),
            list(vec![Value::Float(f64::INFINITY)])
        );
        for bad in [
            "['caf\u{e9}']",
            "[\u{e9}]",
            "[1 2]",
            "[1,,2]",
            "[,]",
            "{'a': 1}",
            "(1, 2)",
            "[Tru]",
            "'unterminated\n'",
            "[1]\u{0}",
        ] {
            let got = parse(bad.as_bytes());
            // `[1]` followed by a NUL is a whole list: the caller judges what follows.
            if bad.starts_with("[1]") {
                assert_eq!(got, Ok((list(vec![Value::Int(1)]), 3)));
            } else {
                assert!(matches!(got, Err(PyError::Invalid(_))), "{bad:?}: {got:?}");
            }
        }
        // Any bytes at all: never a panic.
        for b in 0..=255u8 {
            let _ = parse(&[b'[', b, b']']);
            let _ = parse(&[b'\'', b'\\', b, b'\'']);
        }
    }
}

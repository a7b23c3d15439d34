//! A strict JSON reader for the filters' configuration documents.
//!
//! The filters parse their configuration once per (re)configure, inside the sidecar's Wasm VM,
//! where every kilobyte of module is fetched and compiled by each proxy. A general JSON library
//! with path tracking (serde_json and serde_path_to_error) was about a fifth of each filter's
//! module, mostly for what the configuration never holds: numbers and their formatting tables, a
//! generic data model, structs written as arrays. This reader knows what the documents contain
//! (objects, arrays, strings, and `null` for an absent optional field), reads RFC 8259 JSON
//! strictly, and names where an error is as the field's path (`allow[1].from`, `.` for the
//! document itself).
//!
//! What it accepts is checked against serde_json, an implementation nobody here wrote:
//! `mesh/tests/config_reader.rs` runs generated and mutated documents through both, and the
//! `config` fuzz target asserts that whatever this reader accepts serde_json reads to the same
//! value. It is deliberately stricter than serde's derived readers in three ways: a key given
//! twice in one object is an error (serde keeps the last one of a map), a struct must be an object
//! (serde also takes an array of its fields in order), and an enum must be a string (serde also
//! takes `{"variant": null}`).

use crate::config::ConfigError;

/// One step of the path to the value being read.
enum Segment {
    Key(String),
    Index(usize),
}

/// A cursor over a document, with the path of the value it is at.
pub(crate) struct Reader<'a> {
    src: &'a [u8],
    pos: usize,
    path: Vec<Segment>,
}

/// The JSON type of the value `rest` starts with, as error messages name it; `None` if it does
/// not start a value.
fn found_word(rest: &[u8]) -> Option<&'static str> {
    Some(match rest.first()? {
        b'"' => "string",
        b'{' => "map",
        b'[' => "sequence",
        b't' if rest.starts_with(b"true") => "boolean",
        b'f' if rest.starts_with(b"false") => "boolean",
        b'n' if rest.starts_with(b"null") => "null",
        b'-' | b'0'..=b'9' => "number",
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    pub(crate) fn new(src: &'a [u8]) -> Self {
        Self {
            src,
            pos: 0,
            path: Vec::new(),
        }
    }

    /// The path of the value being read: `allow[0].from`, or `.` for the document.
    fn path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }

    /// An error about the value being read.
    pub(crate) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path(), message)
    }

    /// A syntax error, with the line and column it was found at.
    fn syntax(&self, what: &str) -> ConfigError {
        let before = self.src.get(..self.pos).unwrap_or(self.src);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        self.error(format!("{what} at line {line} column {column}"))
    }

    /// The next byte after whitespace, without consuming it.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
        self.src.get(self.pos).copied()
    }

    /// Consumes `word` if the document continues with it.
    fn eat(&mut self, word: &[u8]) -> bool {
        let matches = self
            .src
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word));
        if matches {
            self.pos += word.len();
        }
        matches
    }

    /// The error for a value that is not what the field wants (`expected`), or not a value.
    fn invalid_type(&mut self, expected: &str) -> ConfigError {
        if self.peek().is_none() {
            return self.syntax("EOF while parsing a value");
        }
        match found_word(self.src.get(self.pos..).unwrap_or_default()) {
            Some(found) => self.error(format!("invalid type: {found}, expected {expected}")),
            None => self.syntax("expected value"),
        }
    }

    /// Fails unless only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<(), ConfigError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.syntax("trailing characters")),
        }
    }

    /// Consumes `null` if it comes next.
    pub(crate) fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.eat(b"null")
    }

    /// Reads a string value.
    pub(crate) fn string(&mut self) -> Result<String, ConfigError> {
        if self.peek() != Some(b'"') {
            return Err(self.invalid_type("a string"));
        }
        self.pos += 1;
        let mut out = Vec::new();
        let mut run = self.pos;
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.syntax("EOF while parsing a string"));
            };
            match b {
                b'"' | b'\\' => {
                    out.extend_from_slice(self.src.get(run..self.pos).unwrap_or_default());
                    self.pos += 1;
                    if b == b'"' {
                        break;
                    }
                    self.escape(&mut out)?;
                    run = self.pos;
                }
                0..=0x1f => {
                    return Err(self.syntax(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ))
                }
                _ => self.pos += 1,
            }
        }
        String::from_utf8(out).map_err(|_| self.syntax("invalid unicode code point"))
    }

    /// Decodes the escape after a backslash into `out`.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), ConfigError> {
        let Some(&c) = self.src.get(self.pos) else {
            return Err(self.syntax("EOF while parsing a string"));
        };
        self.pos += 1;
        let byte = match c {
            b'"' | b'\\' | b'/' => c,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let ch = self.unicode_escape()?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(self.syntax("invalid escape")),
        };
        out.push(byte);
        Ok(())
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32, ConfigError> {
        let mut value = 0;
        for _ in 0..4 {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.syntax("EOF while parsing a string"));
            };
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.syntax("invalid escape")),
            };
            value = value << 4 | u32::from(digit);
            self.pos += 1;
        }
        Ok(value)
    }

    /// The character of a `\uXXXX` escape, or of a `\uD8xx\uDCxx` surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, ConfigError> {
        let code = match self.hex4()? {
            lead @ 0xD800..=0xDBFF => {
                if !self.eat(b"\\u") {
                    return Err(self.syntax("lone leading surrogate in hex escape"));
                }
                let trail = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&trail) {
                    return Err(self.syntax("lone leading surrogate in hex escape"));
                }
                0x10000 + ((lead - 0xD800) << 10) + (trail - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("lone trailing surrogate in hex escape")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.syntax("invalid unicode code point"))
    }

    /// Reads an object, calling `field` with each key to read its value (and to refuse a key it
    /// has seen before). `expected` names the object in a type error.
    #[inline(never)] // see `config::parse_json`
    pub(crate) fn object(
        &mut self,
        expected: &str,
        mut field: impl FnMut(&mut Self, &str) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        if self.peek() != Some(b'{') {
            return Err(self.invalid_type(expected));
        }
        self.pos += 1;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.syntax("EOF while parsing an object")),
                Some(_) => return Err(self.syntax("key must be a string")),
            }
            let key = self.string()?;
            if self.peek() != Some(b':') {
                return Err(match self.peek() {
                    None => self.syntax("EOF while parsing an object"),
                    Some(_) => self.syntax("expected `:`"),
                });
            }
            self.pos += 1;
            self.path.push(Segment::Key(key.clone()));
            field(self, &key)?;
            self.path.pop();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                None => return Err(self.syntax("EOF while parsing an object")),
                Some(_) => return Err(self.syntax("expected `,` or `}`")),
            }
        }
    }

    /// Reads an array, calling `item` to read each element.
    #[inline(never)] // see `config::parse_json`
    pub(crate) fn array(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        if self.peek() != Some(b'[') {
            return Err(self.invalid_type("a sequence"));
        }
        self.pos += 1;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        for index in 0.. {
            self.path.push(Segment::Index(index));
            item(self)?;
            self.path.pop();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => break,
                None => return Err(self.syntax("EOF while parsing a list")),
                Some(_) => return Err(self.syntax("expected `,` or `]`")),
            }
        }
        self.pos += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_of(doc: &str) -> Result<String, ConfigError> {
        let mut r = Reader::new(doc.as_bytes());
        let s = r.string()?;
        r.end()?;
        Ok(s)
    }

    #[test]
    fn strings_decode_every_escape() {
        assert_eq!(
            string_of(r#""a\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00z""#).unwrap(),
            "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1F600}z"
        );
        assert_eq!(string_of("  \"plain\"\n").unwrap(), "plain");
        assert_eq!(string_of("\"caf\u{e9}\"").unwrap(), "caf\u{e9}");
    }

    #[test]
    fn malformed_strings_are_errors_with_a_position() {
        for bad in [
            "\"open",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\uD800\"",
            "\"\\uD800\\u0041\"",
            "\"\\uDC00\"",
            "\"tab\there\"",
            "\"a\" \"b\"",
        ] {
            let err = string_of(bad).unwrap_err();
            assert_eq!(err.field, ".", "{bad}");
            assert!(err.message.contains("at line 1 column"), "{bad}: {err}");
        }
        let mut r = Reader::new(b"\"\xff\"");
        assert!(r.string().is_err());
    }

    #[test]
    fn type_errors_name_what_was_found_and_where() {
        let mut r = Reader::new(br#"{"a": [1]}"#);
        let err = r
            .object("struct T", |r, _| r.array(|r| r.string().map(drop)))
            .unwrap_err();
        assert_eq!(err.field, "a[0]");
        assert_eq!(err.message, "invalid type: number, expected a string");
        let err = Reader::new(b"[]")
            .object("struct T", |_, _| Ok(()))
            .unwrap_err();
        assert_eq!(err.message, "invalid type: sequence, expected struct T");
        let err = Reader::new(b"").string().unwrap_err();
        assert!(
            err.message.starts_with("EOF while parsing a value"),
            "{err}"
        );
        let err = Reader::new(b" true").string().unwrap_err();
        assert_eq!(err.message, "invalid type: boolean, expected a string");
        let err = Reader::new(b"tru").string().unwrap_err();
        assert_eq!(err.message, "expected value at line 1 column 1");
    }

    #[test]
    fn objects_reject_bad_punctuation() {
        for bad in [
            r#"{"k" "v"}"#,
            r#"{"k": "v",}"#,
            r#"{"k": "v" "l": "w"}"#,
            r#"{k: "v"}"#,
            r#"{"k": "v""#,
            r#"["a",]"#,
            r#"["a" "b"]"#,
            r#"["a""#,
        ] {
            let mut r = Reader::new(bad.as_bytes());
            let result = if bad.starts_with('{') {
                r.object("a map", |r, _| r.string().map(drop))
            } else {
                r.array(|r| r.string().map(drop))
            };
            assert!(result.is_err(), "{bad}");
        }
    }

    #[test]
    fn line_and_column_count_from_one() {
        let err = string_of("\n\n  \"a\" x").unwrap_err();
        assert_eq!(err.message, "trailing characters at line 3 column 7");
    }
}

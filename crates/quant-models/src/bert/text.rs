//! Sentences from a text file: one per line.

use std::path::Path;

use super::error::{BertError, Result};

/// The sentences of a text file and what was left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextLines {
    /// The non-empty lines, in order, without their line ends.
    pub sentences: Vec<String>,
    /// The 1-based line number of each sentence in the file.
    pub line_numbers: Vec<usize>,
    /// Lines skipped because they were empty or only whitespace.
    pub skipped_empty: usize,
}

impl TextLines {
    /// Splits `bytes` into lines (`\n`, with a trailing `\r` removed), skipping (and counting)
    /// empty or whitespace-only lines.
    ///
    /// # Errors
    /// [`BertError::InvalidUtf8`] naming the first line that is not UTF-8 (`path` is only
    /// used in the message).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut out = Self::default();
        if bytes.is_empty() {
            return Ok(out);
        }
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = std::str::from_utf8(raw).map_err(|_| BertError::InvalidUtf8 { path: path.into(), line: i + 1 })?;
            if line.trim().is_empty() {
                out.skipped_empty += 1;
            } else {
                out.sentences.push(line.to_string());
                out.line_numbers.push(i + 1);
            }
        }
        Ok(out)
    }

    /// Reads and splits a file ([`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`BertError::Io`], [`BertError::InvalidUtf8`].
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| BertError::Io { path: path.into(), source })?;
        Self::parse(&bytes, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_counted_and_checked() {
        let p = Path::new("t.txt");
        let t = TextLines::parse(b"one\r\n\n  \ntwo\nthree", p).expect("valid");
        assert_eq!(t.sentences, vec!["one", "two", "three"]);
        assert_eq!(t.line_numbers, vec![1, 4, 5]);
        assert_eq!(t.skipped_empty, 2);
        assert_eq!(TextLines::parse(b"a\n", p).expect("valid").sentences, vec!["a"]);
        assert_eq!(TextLines::parse(b"", p).expect("valid"), TextLines::default());
        match TextLines::parse(b"fine\nalso fine\nbad \xff byte\n", p) {
            Err(BertError::InvalidUtf8 { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected an encoding error, got {other:?}"),
        }
    }
}

//! The check that a JSON body is one JSON text, without building anything from it.
//!
//! `serde_json` skipping a value (`IgnoredAny`) was the largest single piece of a
//! request's own work (BENCHMARKS.md, issue 19); this walks the same grammar in one loop
//! over the bytes. It accepts exactly what that skip accepts: RFC 8259's grammar with
//! whitespace around the value, nesting as deep as it goes, and any `\uXXXX` escape (a
//! lone surrogate too). UTF-8 is the caller's to check, as it was. Inside strings it
//! looks at sixteen bytes at a time with SSE2 (all x86_64 CPUs have it; `safe_arch`
//! wraps the instructions in safe functions), one at a time elsewhere. A differential
//! test and a fuzz target (`fuzz/`, `json`) hold the two to the same answers.

/// How deep this check follows nesting; deeper, it cannot tell (`None`) and `serde_json`,
/// which has no limit when it skips, decides.
pub const MAX_DEPTH: usize = 1024;

/// Whether `text` is one JSON text: `Some(true)` or `Some(false)`, or `None` when it
/// nests deeper than [`MAX_DEPTH`] before anything is found wrong.
pub fn check(text: &[u8]) -> Option<bool> {
    let mut walk = Walk {
        text,
        at: 0,
        open: Open::default(),
    };
    walk.text_value()
}

/// The open arrays and objects, innermost last: one bit each, set for an object. The
/// innermost one's kind is kept apart too, since it is asked after every value.
#[derive(Default)]
struct Open {
    bits: [u64; MAX_DEPTH / 64],
    depth: usize,
    /// Whether the innermost open value is an object; `None` when none is open.
    innermost: Option<bool>,
}

impl Open {
    /// `false` when nesting deeper than [`MAX_DEPTH`].
    #[inline(always)]
    fn push(&mut self, object: bool) -> bool {
        let Some(word) = self.bits.get_mut(self.depth / 64) else {
            return false;
        };
        let bit = 1u64 << (self.depth % 64);
        if object {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        self.depth += 1;
        self.innermost = Some(object);
        true
    }

    /// Closes the innermost open value.
    #[inline(always)]
    fn pop(&mut self) {
        self.depth -= 1;
        self.innermost = self
            .depth
            .checked_sub(1)
            .map(|last| self.bits[last / 64] >> (last % 64) & 1 == 1);
    }
}

struct Walk<'a> {
    text: &'a [u8],
    at: usize,
    open: Open,
}

impl Walk<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The whole text: values, and what comes between and after them.
    fn text_value(&mut self) -> Option<bool> {
        loop {
            // A value is due.
            self.skip_whitespace();
            let well_formed = match self.peek() {
                Some(opening @ (b'{' | b'[')) => {
                    let object = opening == b'{';
                    self.at += 1;
                    self.skip_whitespace();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        // Empty: a whole value, and nothing left open.
                        self.at += 1;
                        true
                    } else if !self.open.push(object) {
                        return None;
                    } else if object && !self.key() {
                        return Some(false);
                    } else {
                        continue;
                    }
                }
                Some(b'"') => {
                    self.at += 1;
                    self.string()
                }
                Some(b't') => self.literal(b"true"),
                Some(b'f') => self.literal(b"false"),
                Some(b'n') => self.literal(b"null"),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => false,
            };
            if !well_formed {
                return Some(false);
            }
            // A value ended: commas and closing brackets until the next value is due.
            loop {
                self.skip_whitespace();
                let Some(object) = self.open.innermost else {
                    return Some(self.at == self.text.len());
                };
                match (self.peek(), object) {
                    (Some(b','), _) => {
                        self.at += 1;
                        if object && !self.key() {
                            return Some(false);
                        }
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.at += 1;
                        self.open.pop();
                    }
                    _ => return Some(false),
                }
            }
        }
    }

    /// An object's key and its colon, whitespace before each.
    #[inline(always)]
    fn key(&mut self) -> bool {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return false;
        }
        self.at += 1;
        if !self.string() {
            return false;
        }
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return false;
        }
        self.at += 1;
        true
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self
            .text
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(word));
        self.at += word.len();
        found
    }

    /// A string's rest, after its opening quote, up to and past its closing one.
    #[inline(always)]
    fn string(&mut self) -> bool {
        loop {
            self.at = stop_in_string(self.text, self.at);
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return true;
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1;
                        }
                        Some(b'u') => {
                            let hex = self.text.get(self.at + 1..self.at + 5);
                            if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.at += 5;
                        }
                        _ => return false,
                    }
                }
                // A control character, or the end of the text.
                _ => return false,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return false;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return false;
            }
            self.digits();
        }
        // A digit straight after a lone 0 is left for the caller, which finds no comma,
        // bracket or end there.
        true
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// The first byte at or after `at` that a string cannot hold as it is (a quote, a
/// backslash or a control character), or the text's length.
#[inline(always)]
fn stop_in_string(text: &[u8], mut at: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        match sixteen_at_a_time(text, at) {
            Ok(stop) => return stop,
            Err(tail) => at = tail,
        }
    }
    while let Some(&b) = text.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// `stop_in_string` for as long as sixteen bytes remain: `Ok` with the stop, or `Err`
/// with where fewer than sixteen remain and no stop was found before (as
/// `slice::binary_search` answers), so that a stop found here is not looked at again.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn sixteen_at_a_time(text: &[u8], mut at: usize) -> Result<usize, usize> {
    use safe_arch::*;
    let quote = set_splat_i8_m128i(b'"' as i8);
    let backslash = set_splat_i8_m128i(b'\\' as i8);
    let last_control = set_splat_i8_m128i(0x1f);
    while let Some(chunk) = text.get(at..at + 16) {
        let mut bytes = [0; 16];
        bytes.copy_from_slice(chunk);
        let v = load_unaligned_m128i(&bytes);
        // A byte is a control character when the smaller of it and 0x1f is itself.
        let control = cmp_eq_mask_i8_m128i(min_u8_m128i(v, last_control), v);
        let stops = bitor_m128i(
            bitor_m128i(
                cmp_eq_mask_i8_m128i(v, quote),
                cmp_eq_mask_i8_m128i(v, backslash),
            ),
            control,
        );
        let found = move_mask_i8_m128i(stops);
        if found != 0 {
            return Ok(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    Err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_accepts(text: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn it_answers_as_serde_json_skipping_a_value_does() {
        let cases: &[&[u8]] = &[
            b"{}",
            b" { } ",
            b"[]",
            b"[ ]",
            b"0",
            b"-0",
            b"-",
            b"01",
            b"-01",
            b"1.",
            b"1.5",
            b".5",
            b"+1",
            b"1e",
            b"1e+",
            b"1E-7",
            b"1.5e3x",
            b"1ee3",
            b"0x10",
            b"00",
            b"\"\"",
            b"\"abc",
            b"\"a\\\"b\"",
            b"\"\\u00e9\\uD800\\udfff\"",
            b"\"\\u00g9\"",
            b"\"\\u12\"",
            b"\"\\x\"",
            b"\"tab\there\"",
            b"\"del\x7fok\"",
            b"\"\xff\xfe raw bytes\"",
            b"true",
            b"tru",
            b"truex",
            b"nul",
            b"null null",
            b"[1,]",
            b"[,1]",
            b"[1 2]",
            b"[1,,2]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":[1,{\"b\":null}],\"c\":\"\\u00e9\"}",
            b"[{]}",
            b"[}",
            b"{]",
            b"[[[]]]",
            b"[[[]]",
            b"[]]",
            b"",
            b"   ",
            b"\xef\xbb\xbf{}",
            b"{}\x00",
            b"\x0c{}",
            b"\r\n\t[\r\n\t1\r\n\t]\r\n\t",
            b"\"0123456789abcdef0123456789\"",
            b"\"0123456789abcde\"f0123456789\"",
            b"\"0123456789abcde\x1f0123456789\"",
        ];
        for case in cases {
            assert_eq!(
                check(case),
                Some(serde_accepts(case)),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn it_leaves_nesting_past_its_depth_to_serde_json() {
        let nested = |depth| [vec![b'['; depth], b"1".to_vec(), vec![b']'; depth]].concat();
        assert_eq!(check(&nested(MAX_DEPTH)), Some(true));
        // An empty array or object opens nothing to come back to.
        let empty_innermost = [vec![b'['; MAX_DEPTH + 1], vec![b']'; MAX_DEPTH + 1]].concat();
        assert_eq!(check(&empty_innermost), Some(true));
        let deeper = nested(MAX_DEPTH + 1);
        assert_eq!(check(&deeper), None);
        assert!(serde_accepts(&deeper));
        let mixed = [
            b"{\"a\":".repeat(MAX_DEPTH),
            b"1".to_vec(),
            vec![b'}'; MAX_DEPTH],
        ]
        .concat();
        assert_eq!(check(&mixed), Some(true));
        // Wrong before it is too deep: an answer, not "cannot tell".
        let wrong_first = [b"[1 2,".to_vec(), nested(MAX_DEPTH + 1)].concat();
        assert_eq!(check(&wrong_first), Some(false));
    }

    #[test]
    fn every_position_of_a_stop_byte_in_a_long_string_is_found() {
        for len in 0..50 {
            for stop in [b'"', b'\\', 0x00, 0x1f] {
                let mut text = vec![b'a'; len];
                text.push(stop);
                text.extend_from_slice(b"bbbbbbbbbbbbbbbbbb");
                for from in 0..=len {
                    assert_eq!(stop_in_string(&text, from), len, "len {len}, from {from}");
                }
            }
        }
        // Bytes from 0x20 up, 0x80 and over too, are no stops, in the sixteen-byte loop
        // as in the byte loop.
        let high = [
            0x20, 0x21, 0x5b, 0x5d, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0xc3, 0xfe, 0xff,
        ];
        for len in 0..50 {
            let mut text: Vec<u8> = high.iter().copied().cycle().take(len).collect();
            text.push(0x1f);
            text.extend_from_slice(&high);
            assert_eq!(stop_in_string(&text, 0), len, "len {len}");
            // The sixteen-byte loop alone: the stop when its chunk is whole, else where
            // fewer than sixteen bytes are left (the stop it finds is taken as it is,
            // not looked at again by the byte loop).
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            {
                let chunk = len / 16 * 16;
                let whole = chunk + 16 <= text.len();
                let expected = if whole { Ok(len) } else { Err(chunk) };
                assert_eq!(sixteen_at_a_time(&text, 0), expected, "len {len}");
            }
        }
        assert_eq!(stop_in_string(b"abc", 3), 3);
        assert_eq!(stop_in_string(b"abc", 9), 9);
    }
}

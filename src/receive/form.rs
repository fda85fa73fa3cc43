//! `application/x-www-form-urlencoded` to a JSON object of strings; a repeated name
//! becomes an array of its values in order. `+` is a space, `%XX` a byte, and the decoded
//! bytes must be UTF-8.

use serde_json::{Map, Value};

use super::add_repeated;

fn decode(part: &[u8]) -> Result<String, String> {
    let spaced: Vec<u8> = part
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(bytes).map_err(|_| "a form field is not valid UTF-8 once decoded".to_string())
}

pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let mut fields = Map::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        add_repeated(&mut fields, decode(name)?, Value::String(decode(value)?));
    }
    Ok(Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_repeats_spaces_and_escapes() {
        let body = b"a=1&b=x+y%20z&a=2&empty=&bare&name=Zo%C3%AB&&a=3";
        assert_eq!(
            to_json(body).unwrap(),
            json!({"a": ["1", "2", "3"], "b": "x y z", "empty": "", "bare": "", "name": "Zoë"})
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(to_json(b"a=%FF").is_err());
    }
}

//! Plain-text output for the admin commands: aligned tables and single cells drawn from
//! the admin API's JSON. Cells may hold what an endpoint answered, so control characters
//! are blanked (no terminal escapes from a stranger's response body) and long text is cut.

use serde_json::Value;

/// The most characters of free text (an error, a response body) shown in a table cell.
pub const CELL_WIDTH: usize = 60;

/// Rows under a header, each column as wide as its widest cell; the last column is not
/// padded, so lines carry no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            line.push_str(cell);
            if i + 1 < columns {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A field as text: strings as they are, numbers and booleans written out, `-` for
/// missing or null, anything else as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => clean(s, usize::MAX),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        Value::Number(n) => n.to_string(),
        other => clean(&other.to_string(), usize::MAX),
    }
}

/// `text` on one line without control characters, cut to `max` characters with `…`.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A list of strings joined with `, `.
pub fn joined(value: &Value) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Some(_) => "-".to_string(),
        None => cell(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_without_trailing_spaces() {
        let out = table(
            &["ID", "NAME", "URL"],
            &[
                vec!["1".into(), "a-long-name".into(), "https://x".into()],
                vec!["22".into(), "b".into(), "-".into()],
            ],
        );
        assert_eq!(
            out,
            "ID  NAME         URL\n1   a-long-name  https://x\n22  b            -\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn cells_are_one_safe_line() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(cell(&json!(42)), "42");
        assert_eq!(cell(&json!("a\nb\u{1b}[31m")), "a b [31m");
        assert_eq!(clean("ünïcode", 3), "ünï…");
        assert_eq!(clean("abc", 3), "abc");
        assert_eq!(joined(&json!(["a:b", "c:*"])), "a:b, c:*");
        assert_eq!(joined(&json!([])), "-");
        assert_eq!(joined(&json!(null)), "-");
    }
}

//! Wording shared by the commands' messages.

/// `n` with its noun in the right number: `1 input`, `2 inputs`, `0 inputs`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `what: message`, or the message alone when it already begins with `what` (image errors name
/// their file: `a.jpg: a.jpg: not a recognised image` says it twice).
pub fn about(what: &str, message: &str) -> String {
    if !what.is_empty() && message.starts_with(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::{about, count};

    #[test]
    fn a_message_that_names_its_subject_is_not_prefixed_again() {
        assert_eq!(about("a.jpg", "a.jpg: not an image"), "a.jpg: not an image");
        assert_eq!(about("docs.jsonl:1", "no id"), "docs.jsonl:1: no id");
    }

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(1, "input", "inputs"), "1 input");
        assert_eq!(count(0, "input", "inputs"), "0 inputs");
        assert_eq!(count(2, "query", "queries"), "2 queries");
    }
}

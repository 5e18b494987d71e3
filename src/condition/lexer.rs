//! Tokens of the conditional language, with the 1-based column where each starts.
//!
//! Columns count characters, not bytes, so an operator sees the same number an editor shows.

use super::ConditionError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    Regex {
        pattern: String,
        flags: String,
        flags_col: usize,
    },
    True,
    False,
    Null,
    Includes,
    Eq,
    NotEq,
    Match,
    NotMatch,
    And,
    Or,
    Bang,
    Question,
    Colon,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("`{name}`"),
            Tok::Int(n) => format!("`{n}`"),
            Tok::Str(_) => "a string".to_owned(),
            Tok::Regex { .. } => "a regular expression".to_owned(),
            Tok::True => "`true`".to_owned(),
            Tok::False => "`false`".to_owned(),
            Tok::Null => "`null`".to_owned(),
            Tok::Includes => "`includes`".to_owned(),
            Tok::Eof => "end of expression".to_owned(),
            other => format!("\"{}\"", other.symbol()),
        }
    }

    pub(crate) fn symbol(&self) -> &'static str {
        match self {
            Tok::Eq => "==",
            Tok::NotEq => "!=",
            Tok::Match => "=~",
            Tok::NotMatch => "!~",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Bang => "!",
            Tok::Question => "?",
            Tok::Colon => ":",
            Tok::Comma => ",",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Includes => "includes",
            _ => "",
        }
    }
}

/// A token and the column of its first character.
pub(crate) type Spanned = (Tok, usize);

/// Splits the whole expression into tokens up front: expressions are short, and a complete
/// token list lets the parser look ahead without re-lexing.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Spanned>, ConditionError> {
    let mut lx = Lexer {
        chars: src.chars().collect(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        lx.skip_space_and_comments();
        let col = lx.pos + 1;
        let tok = lx.next_token()?;
        let done = tok == Tok::Eof;
        out.push((tok, col));
        if done {
            return Ok(out);
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

fn syntax(column: usize, message: impl Into<String>) -> ConditionError {
    ConditionError::Syntax {
        column,
        message: message.into(),
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0);
        self.pos += usize::from(c.is_some());
        c
    }

    /// `//` starts a comment to the end of the line, as in Buildkite; a regex can therefore
    /// never be empty.
    fn skip_space_and_comments(&mut self) {
        loop {
            while matches!(self.peek(0), Some(' ' | '\t' | '\n' | '\r')) {
                self.pos += 1;
            }
            if self.peek(0) == Some('/') && self.peek(1) == Some('/') {
                while !matches!(self.peek(0), None | Some('\n')) {
                    self.pos += 1;
                }
            } else {
                return;
            }
        }
    }

    fn next_token(&mut self) -> Result<Tok, ConditionError> {
        let col = self.pos + 1;
        let Some(c) = self.bump() else {
            return Ok(Tok::Eof);
        };
        let two = |lx: &mut Lexer, second: char, tok: Tok| {
            if lx.peek(0) == Some(second) {
                lx.pos += 1;
                Some(tok)
            } else {
                None
            }
        };
        let tok = match c {
            '=' => two(self, '=', Tok::Eq).or_else(|| two(self, '~', Tok::Match)),
            '!' => two(self, '=', Tok::NotEq)
                .or_else(|| two(self, '~', Tok::NotMatch))
                .or(Some(Tok::Bang)),
            '&' => two(self, '&', Tok::And),
            '|' => two(self, '|', Tok::Or),
            '?' => Some(Tok::Question),
            ':' => Some(Tok::Colon),
            ',' => Some(Tok::Comma),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            '"' | '\'' => return self.string(c, col),
            '/' => return self.regex(col),
            '$' => {
                return Err(syntax(col, "shell substitution (`$name`) is not supported"));
            }
            c if c.is_ascii_digit() => return self.integer(c, col),
            c if is_ident_start(c) => return self.ident(c, col),
            _ => None,
        };
        tok.ok_or_else(|| match c {
            '=' | '&' | '|' => syntax(col, format!("unexpected \"{c}\"; did you mean \"{c}{c}\"?")),
            _ => syntax(col, format!("unexpected character {c:?}")),
        })
    }

    fn integer(&mut self, first: char, col: usize) -> Result<Tok, ConditionError> {
        let mut text = first.to_string();
        while let Some(c) = self.peek(0).filter(char::is_ascii_digit) {
            text.push(c);
            self.pos += 1;
        }
        // Buildkite's Go port reads `010` as octal; refusing leading zeros avoids that trap.
        if text.len() > 1 && text.starts_with('0') {
            return Err(syntax(col, format!("integer {text} has a leading zero")));
        }
        text.parse()
            .map(Tok::Int)
            .map_err(|_| syntax(col, format!("integer {text} is too large")))
    }

    /// Identifiers include dots (`build.pull_request.id`), as Buildkite lexes them; a path
    /// with an empty segment is refused.
    fn ident(&mut self, first: char, col: usize) -> Result<Tok, ConditionError> {
        let mut text = first.to_string();
        while let Some(c) = self
            .peek(0)
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        {
            text.push(c);
            self.pos += 1;
        }
        Ok(match text.as_str() {
            "true" => Tok::True,
            "false" => Tok::False,
            "null" => Tok::Null,
            "includes" => Tok::Includes,
            _ if text.ends_with('.') || text.contains("..") => {
                return Err(syntax(col, format!("invalid dotted name `{text}`")));
            }
            _ => Tok::Ident(text),
        })
    }

    fn string(&mut self, quote: char, col: usize) -> Result<Tok, ConditionError> {
        let mut out = String::new();
        loop {
            let esc_col = self.pos + 1;
            match self.bump() {
                None => return Err(syntax(col, "unterminated string")),
                Some(c) if c == quote => return Ok(Tok::Str(out)),
                Some('$') if quote == '"' => {
                    return Err(syntax(
                        esc_col,
                        "shell substitution (`$`) in double-quoted strings is not supported; \
                         use single quotes for a literal `$`",
                    ));
                }
                Some('\\') => {
                    let Some(next) = self.bump() else {
                        return Err(syntax(col, "unterminated string"));
                    };
                    if quote == '\'' {
                        // Single quotes only know `\\` and `\'`; anything else stays as written.
                        if next != '\\' && next != '\'' {
                            out.push('\\');
                        }
                        out.push(next);
                    } else {
                        out.push(self.escape(next, esc_col)?);
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// Double-quoted escapes as Buildkite's shell-style strings have them.
    fn escape(&mut self, next: char, col: usize) -> Result<char, ConditionError> {
        Ok(match next {
            'n' => '\n',
            's' => ' ',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{0b}',
            'f' => '\u{0c}',
            'b' => '\u{08}',
            'a' => '\u{07}',
            'e' => '\u{1b}',
            'x' => {
                let hex: String = (0..2).filter_map(|i| self.peek(i)).collect();
                if hex.len() == 2 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    self.pos += 2;
                    return ascii_escape(u32::from_str_radix(&hex, 16).unwrap_or(u32::MAX), col);
                }
                'x'
            }
            '0'..='7' => {
                let mut digits = next.to_string();
                while digits.len() < 3 {
                    match self.peek(0) {
                        Some(d @ '0'..='7') => {
                            digits.push(d);
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                return ascii_escape(u32::from_str_radix(&digits, 8).unwrap_or(u32::MAX), col);
            }
            other => other,
        })
    }

    /// A regex runs to the next unescaped `/`; letters straight after it are flags.
    fn regex(&mut self, col: usize) -> Result<Tok, ConditionError> {
        let mut pattern = String::new();
        let mut escaped = false;
        loop {
            match self.bump() {
                None => return Err(syntax(col, "unterminated regular expression")),
                Some('/') if !escaped => break,
                Some(c) => {
                    escaped = c == '\\' && !escaped;
                    pattern.push(c);
                }
            }
        }
        let flags_col = self.pos + 1;
        let mut flags = String::new();
        while let Some(c) = self.peek(0).filter(|c| c.is_ascii_alphabetic()) {
            flags.push(c);
            self.pos += 1;
        }
        Ok(Tok::Regex {
            pattern,
            flags,
            flags_col,
        })
    }
}

/// Buildkite's escapes produce raw bytes; ours must stay valid UTF-8, so only ASCII values
/// are accepted (see the module docs).
fn ascii_escape(value: u32, col: usize) -> Result<char, ConditionError> {
    char::from_u32(value)
        .filter(char::is_ascii)
        .ok_or_else(|| syntax(col, format!("escape value {value} is outside ASCII")))
}

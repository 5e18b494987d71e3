//! The syntax tree, and its canonical printer (`Display`).
//!
//! Each node keeps the column it started at (for checker errors) and its depth. Depth is
//! computed as nodes are built so the parser can refuse trees deep enough to exhaust the stack
//! in the recursive checker, evaluator, printer or drop.

use std::fmt;
use std::sync::Arc;

/// Binary operators, loosest first within each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    NotEq,
    Match,
    NotMatch,
    Includes,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::NotEq => "!=",
            BinOp::Match => "=~",
            BinOp::NotMatch => "!~",
            BinOp::Includes => "includes",
        }
    }

    /// Binding power, as in buildkite/conditional's parser: ternary (1) < `||` < `&&` <
    /// comparisons and `includes` < prefix `!` (5). All binary operators are left-associative.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 2,
            BinOp::And => 3,
            _ => 4,
        }
    }
}

pub(crate) const PREC_TERNARY: u8 = 1;
pub(crate) const PREC_PREFIX: u8 = 5;
const PREC_ATOM: u8 = 6;

/// A regex literal: its source text and the regex compiled once at parse time.
#[derive(Debug, Clone)]
pub struct RegexLit {
    pub pattern: String,
    pub flags: String,
    pub(crate) compiled: Arc<regex::Regex>,
}

impl PartialEq for RegexLit {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.flags == other.flags
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Regex(RegexLit),
    Var(String),
    Call {
        name: String,
        args: Vec<Expr>,
    },
    Array(Vec<Expr>),
    Not(Box<Expr>),
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Ternary {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
}

/// A node. Equality compares the tree only, not where it was written.
#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    /// 1-based character column of the node's first token.
    pub column: usize,
    pub(crate) depth: usize,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Expr {
    pub fn new(kind: ExprKind, column: usize) -> Expr {
        let children: Vec<&Expr> = match &kind {
            ExprKind::Call { args, .. } => args.iter().collect(),
            ExprKind::Array(items) => items.iter().collect(),
            ExprKind::Not(e) => vec![e],
            ExprKind::Binary { left, right, .. } => vec![left, right],
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => vec![cond, then, otherwise],
            _ => Vec::new(),
        };
        let depth = 1 + children.iter().map(|c| c.depth).max().unwrap_or(0);
        Expr {
            kind,
            column,
            depth,
        }
    }

    fn precedence(&self) -> u8 {
        match &self.kind {
            ExprKind::Binary { op, .. } => op.precedence(),
            ExprKind::Ternary { .. } => PREC_TERNARY,
            ExprKind::Not(_) => PREC_PREFIX,
            _ => PREC_ATOM,
        }
    }

    /// Prints `self`, in parentheses if it binds looser than `min`.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Double-quoted, escaping what the lexer would otherwise read differently.
fn write_str_lit(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '$' => f.write_str("\\$")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_ascii_control() => write!(f, "\\x{:02x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// The canonical form: single spaces around operators, double-quoted strings, and only the
/// parentheses the precedence rules need. It parses back to an equal tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Null => f.write_str("null"),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Int(n) => write!(f, "{n}"),
            ExprKind::Str(s) => write_str_lit(f, s),
            ExprKind::Regex(r) => write!(f, "/{}/{}", r.pattern, r.flags),
            ExprKind::Var(name) => f.write_str(name),
            ExprKind::Call { name, args } => {
                write!(f, "{name}(")?;
                write_list(f, args)?;
                f.write_str(")")
            }
            ExprKind::Array(items) => {
                f.write_str("[")?;
                write_list(f, items)?;
                f.write_str("]")
            }
            ExprKind::Not(e) => {
                f.write_str("!")?;
                e.fmt_at(f, PREC_PREFIX)
            }
            ExprKind::Binary { op, left, right } => {
                let p = op.precedence();
                left.fmt_at(f, p)?;
                write!(f, " {} ", op.symbol())?;
                right.fmt_at(f, p + 1)
            }
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => {
                cond.fmt_at(f, PREC_TERNARY + 1)?;
                f.write_str(" ? ")?;
                then.fmt_at(f, PREC_TERNARY)?;
                f.write_str(" : ")?;
                otherwise.fmt_at(f, PREC_TERNARY)
            }
        }
    }
}

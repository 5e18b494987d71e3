//! Buildkite's conditional expression language: the language of `if:` in `pipeline.yml` and
//! of notification conditions, e.g.
//! `build.branch == pipeline.default_branch && build.message !~ /\[skip ci\]/i`.
//!
//! An expression is compiled once into a [`Condition`]: lexed, parsed, its regexes compiled
//! (with a size limit) and type-checked against a caller-supplied [`Schema`]. The condition
//! then evaluates many times against [`Variables`] without re-parsing. [`Condition::eval`]
//! fails closed: an expression that cannot be decided is `false`.
//!
//! The reference is Buildkite's own Go library, buildkite/conditional, which ports the
//! server's tests; its precedence, null rules and type rules are followed here:
//!
//! - literals: `"double"` (with `\n \t \xHH \101`-style escapes) and `'single'` strings,
//!   integers, `true`, `false`, `null`, `/regex/` with the `i` flag, and string arrays `[…]`;
//! - dotted variables (`build.branch`) and the functions `env("X")` (a missing name is `""`)
//!   and `build.env("X")` (a missing name is `null`);
//! - operators, loosest first: `c ? a : b` (right-associative), `||`, `&&`, then
//!   `== != =~ !~ includes` (one level, left-associative), then prefix `!`; parentheses group;
//! - `//` comments to the end of the line;
//! - null: `null == null`; null differs from every other value; `=~` on null is false (`!~`
//!   true); `includes` on a null array or of null is false; `!null` is true; null is falsy.
//!
//! Differences from Buildkite that remain, and why (README's "Routes in Buildkite's
//! language" lists these and the webhook schema's own):
//!
//! - Regexes first pass Buildkite's own dialect rules (see `dialect.rs`): lookbehind, atomic
//!   groups, named groups, conditionals and possessive quantifiers are refused as Buildkite
//!   refuses them, and `(?#…)` comments are dropped. Then Rust's `regex` crate compiles them,
//!   so lookahead and backreferences, which Buildkite accepts, are refused with a message
//!   calling them a known difference. In exchange matching runs in linear time, with no
//!   timeout needed.
//! - Shell substitution (`$name`, `${name:-default}`, and `$` inside double-quoted strings) is
//!   refused with an error: it depends on the build's environment, which kitebridge does not
//!   have. Write `\$` or use single quotes for a literal `$`.
//! - `\xHH` and octal escapes must be ASCII (Buildkite allows any byte), so strings stay UTF-8.
//! - Integers with a leading zero (`010`) are refused; Buildkite's Go port reads them as octal.
//! - A schema may list the values of a string variable ([`Schema::with_values`]); a literal
//!   outside them is refused wherever it meets the variable (`==`, `!=`, an `includes` array).
//!   Buildkite also refuses such a variable on the right of `==`, after `includes` and before
//!   `=~`; here those are accepted.
//! - A schema may refuse `env()` (the uploading agent's environment; the webhook schema does), and
//!   `build.env()` reads only the 38 `BUILDKITE_*` names Buildkite's server allows.
//! - There are no `.includes(x)` method calls: Buildkite spells it as the `includes` operator.

mod ast;
mod build_env;
mod check;
mod dialect;
mod eval;
mod lexer;
mod parser;
#[cfg(test)]
mod props;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_tests;
mod variables;

pub use ast::{BinOp, Expr, ExprKind, RegexLit};
pub use parser::MAX_DEPTH;
pub use schema::{Schema, Type, nearest};
pub use variables::{EventVariables, schema as event_schema};

/// A run-time value, as a [`Variables`] lookup supplies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Missing or unset: Buildkite's `null`.
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    /// Buildkite's arrays hold strings only (e.g. `build.creator.teams`).
    Array(Vec<String>),
}

/// As the expression language writes it: `null`, `true`, `42`, `"text"`, `["a", "b"]`.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Array(items) => write!(f, "{items:?}"),
        }
    }
}

/// Where a condition reads its variables. A closure `Fn(&str) -> Value` is one, with no
/// environment.
pub trait Variables {
    /// The value of a schema path such as `build.branch`; [`Value::Null`] when missing.
    fn get(&self, path: &str) -> Value;

    /// The build's environment variable `name`, for `env()` and `build.env()`.
    fn env(&self, _name: &str) -> Option<String> {
        None
    }
}

impl<F: Fn(&str) -> Value> Variables for F {
    fn get(&self, path: &str) -> Value {
        self(path)
    }
}

/// Everything that can go wrong, each with the 1-based character column it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("column {column}: {message}")]
    Syntax { column: usize, message: String },
    #[error("column {column}: invalid regular expression: {message}")]
    Regex { column: usize, message: String },
    #[error("column {column}: expression is nested more than {limit} levels deep")]
    TooDeep { column: usize, limit: usize },
    #[error(
        "column {column}: unknown variable `{name}`{}",
        did_you_mean(suggestions)
    )]
    UnknownVariable {
        column: usize,
        name: String,
        suggestions: Vec<String>,
    },
    #[error("column {column}: unknown function `{name}` (known: env, build.env)")]
    UnknownFunction { column: usize, name: String },
    #[error("column {column}: {message}")]
    Type { column: usize, message: String },
    /// Only at evaluation, when a lookup breaks the schema or a value cannot be used.
    #[error("column {column}: {message}")]
    Eval { column: usize, message: String },
}

impl ConditionError {
    pub fn column(&self) -> usize {
        match self {
            ConditionError::Syntax { column, .. }
            | ConditionError::Regex { column, .. }
            | ConditionError::TooDeep { column, .. }
            | ConditionError::UnknownVariable { column, .. }
            | ConditionError::UnknownFunction { column, .. }
            | ConditionError::Type { column, .. }
            | ConditionError::Eval { column, .. } => *column,
        }
    }
}

fn did_you_mean(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", names.join(", "))
    }
}

/// A parsed and checked condition, ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    /// Parses `src`, compiles its regexes and checks it against `schema`.
    pub fn compile(src: &str, schema: &Schema) -> Result<Condition, ConditionError> {
        let expr = parser::parse(src)?;
        check::check_condition(&expr, schema)?;
        Ok(Condition {
            source: src.to_owned(),
            expr,
        })
    }

    /// Parses without checking types or names: for tools that only need the tree.
    pub fn parse(src: &str) -> Result<Expr, ConditionError> {
        parser::parse(src)
    }

    /// Whether the condition holds. Evaluation errors count as `false` (fail closed).
    pub fn eval(&self, vars: &dyn Variables) -> bool {
        self.eval_value(vars).is_ok_and(|v| eval::truthy(&v))
    }

    /// The raw result (a boolean or null), or why it could not be computed.
    pub fn eval_value(&self, vars: &dyn Variables) -> Result<Value, ConditionError> {
        eval::eval(&self.expr, vars)
    }

    /// The expression as written.
    /// The variables it reads, in the order they first appear.
    pub fn variables(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match &e.kind {
                ExprKind::Var(name) if !out.contains(name) => out.push(name.clone()),
                ExprKind::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
                ExprKind::Array(items) => items.iter().for_each(|a| walk(a, out)),
                ExprKind::Not(inner) => walk(inner, out),
                ExprKind::Binary { left, right, .. } => {
                    walk(left, out);
                    walk(right, out);
                }
                ExprKind::Ternary {
                    cond,
                    then,
                    otherwise,
                } => {
                    walk(cond, out);
                    walk(then, out);
                    walk(otherwise, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.expr, &mut out);
        out
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

/// The canonical form of the expression (see [`Expr`]'s `Display`).
impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.expr.fmt(f)
    }
}

//! Precedence-climbing parser from tokens to [`Expr`], mirroring the binding powers of
//! buildkite/conditional's Pratt parser.

use std::sync::Arc;

use super::ConditionError;
use super::ast::{BinOp, Expr, ExprKind, PREC_PREFIX, PREC_TERNARY, RegexLit};
use super::lexer::{Spanned, Tok, tokenize};

/// Deepest tree (and deepest parser recursion) accepted. Real conditions are a few levels
/// deep; the limit keeps every recursive walk far from the stack's end.
pub const MAX_DEPTH: usize = 64;

/// Largest compiled regex program, so one literal cannot take unbounded memory or time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn parse(src: &str) -> Result<Expr, ConditionError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    if p.peek() == &Tok::Eof {
        return Err(ConditionError::Syntax {
            column: 1,
            message: "empty expression".into(),
        });
    }
    let expr = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("an operator or end of expression"));
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
    depth: usize,
}

fn binop(tok: &Tok) -> Option<BinOp> {
    Some(match tok {
        Tok::Or => BinOp::Or,
        Tok::And => BinOp::And,
        Tok::Eq => BinOp::Eq,
        Tok::NotEq => BinOp::NotEq,
        Tok::Match => BinOp::Match,
        Tok::NotMatch => BinOp::NotMatch,
        Tok::Includes => BinOp::Includes,
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> &Tok {
        // The token list always ends with Eof and `bump` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn column(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].1
    }

    fn bump(&mut self) -> Spanned {
        let t = self.tokens[self.pos.min(self.tokens.len() - 1)].clone();
        if t.0 != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    /// "expected X after Y, found Z", at the column of Z.
    fn unexpected(&self, expected: &str) -> ConditionError {
        let after = match self.pos.checked_sub(1).map(|i| &self.tokens[i].0) {
            Some(prev) => format!(" after {}", prev.describe()),
            None => String::new(),
        };
        ConditionError::Syntax {
            column: self.column(),
            message: format!(
                "expected {expected}{after}, found {}",
                self.peek().describe()
            ),
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<(), ConditionError> {
        if self.peek() == &tok {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(&format!("\"{}\"", tok.symbol())))
        }
    }

    fn node(&self, kind: ExprKind, column: usize) -> Result<Expr, ConditionError> {
        let e = Expr::new(kind, column);
        if e.depth > MAX_DEPTH {
            return Err(ConditionError::TooDeep {
                column,
                limit: MAX_DEPTH,
            });
        }
        Ok(e)
    }

    /// Parses operators binding tighter than `min`.
    fn expr(&mut self, min: u8) -> Result<Expr, ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ConditionError::TooDeep {
                column: self.column(),
                limit: MAX_DEPTH,
            });
        }
        let result = self.expr_inner(min);
        self.depth -= 1;
        result
    }

    fn expr_inner(&mut self, min: u8) -> Result<Expr, ConditionError> {
        let mut left = self.prefix()?;
        loop {
            let column = left.column;
            if let Some(op) = binop(self.peek()) {
                if op.precedence() <= min {
                    return Ok(left);
                }
                self.bump();
                let right = self.expr(op.precedence())?;
                let kind = ExprKind::Binary {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                };
                left = self.node(kind, column)?;
            } else if self.peek() == &Tok::Question && PREC_TERNARY > min {
                self.bump();
                let then = self.expr(0)?;
                self.expect(Tok::Colon)?;
                // Parsed at the lowest level, so `a ? b : c ? d : e` nests to the right.
                let otherwise = self.expr(0)?;
                let kind = ExprKind::Ternary {
                    cond: Box::new(left),
                    then: Box::new(then),
                    otherwise: Box::new(otherwise),
                };
                left = self.node(kind, column)?;
            } else {
                return Ok(left);
            }
        }
    }

    fn prefix(&mut self) -> Result<Expr, ConditionError> {
        let column = self.column();
        let kind = match self.peek().clone() {
            Tok::Null => ExprKind::Null,
            Tok::True => ExprKind::Bool(true),
            Tok::False => ExprKind::Bool(false),
            Tok::Int(n) => ExprKind::Int(n),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Regex {
                pattern,
                flags,
                flags_col,
            } => ExprKind::Regex(compile_regex(pattern, flags, column, flags_col)?),
            Tok::Bang => {
                self.bump();
                let operand = self.expr(PREC_PREFIX)?;
                return self.node(ExprKind::Not(Box::new(operand)), column);
            }
            Tok::LParen => {
                self.bump();
                let inner = self.expr(0)?;
                self.expect(Tok::RParen)?;
                return Ok(inner);
            }
            Tok::LBracket => {
                self.bump();
                let items = self.list(Tok::RBracket)?;
                return self.node(ExprKind::Array(items), column);
            }
            Tok::Ident(name) => {
                self.bump();
                if self.peek() == &Tok::LParen {
                    self.bump();
                    let args = self.list(Tok::RParen)?;
                    return self.node(ExprKind::Call { name, args }, column);
                }
                return self.node(ExprKind::Var(name), column);
            }
            _ => return Err(self.unexpected("a value")),
        };
        self.bump();
        self.node(kind, column)
    }

    /// Comma-separated expressions up to `end`; the opening token is already consumed.
    fn list(&mut self, end: Tok) -> Result<Vec<Expr>, ConditionError> {
        let mut items = Vec::new();
        if self.peek() == &end {
            self.bump();
            return Ok(items);
        }
        loop {
            items.push(self.expr(0)?);
            if self.peek() == &Tok::Comma {
                self.bump();
            } else {
                self.expect(end)?;
                return Ok(items);
            }
        }
    }
}

fn compile_regex(
    pattern: String,
    flags: String,
    column: usize,
    flags_col: usize,
) -> Result<RegexLit, ConditionError> {
    if let Some(i) = flags.chars().position(|c| c != 'i') {
        return Err(ConditionError::Regex {
            column: flags_col + i,
            message: format!(
                "unsupported flag {:?} (only `i` is supported)",
                &flags[i..=i]
            ),
        });
    }
    // Buildkite's rules first, so what Buildkite refuses is refused here with its column.
    let rust_pattern = super::dialect::translate(&pattern).map_err(|e| ConditionError::Regex {
        column: column + 1 + e.offset,
        message: e.message,
    })?;
    let compiled = regex::RegexBuilder::new(&rust_pattern)
        .case_insensitive(!flags.is_empty())
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ConditionError::Regex {
            column,
            message: match e {
                regex::Error::Syntax(s) => s.lines().last().unwrap_or("invalid").to_owned(),
                other => other.to_string(),
            },
        })?;
    Ok(RegexLit {
        pattern,
        flags,
        compiled: Arc::new(compiled),
    })
}

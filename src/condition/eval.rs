//! Evaluation of a checked tree, with Buildkite's null rules.
//!
//! The checker has already ruled out type errors for values that follow the schema; the
//! remaining errors here are a lookup returning the wrong type, or null where Buildkite also
//! fails (a null inside an array literal). Callers of [`super::Condition::eval`] see those as
//! `false`: a condition that cannot be decided does not match.

use super::ast::{BinOp, Expr, ExprKind, RegexLit};
use super::{ConditionError, Value, Variables};

enum V<'a> {
    Val(Value),
    Re(&'a RegexLit),
}

fn fail(e: &Expr, message: String) -> ConditionError {
    ConditionError::Eval {
        column: e.column,
        message,
    }
}

/// Buildkite's truthiness: null and false are false; the checker keeps others out.
pub(crate) fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

pub(crate) fn eval(e: &Expr, vars: &dyn Variables) -> Result<Value, ConditionError> {
    match eval_any(e, vars)? {
        V::Val(v) => Ok(v),
        V::Re(_) => Err(fail(e, "a regular expression is not a value".into())),
    }
}

fn eval_any<'a>(e: &'a Expr, vars: &dyn Variables) -> Result<V<'a>, ConditionError> {
    let v = match &e.kind {
        ExprKind::Null => Value::Null,
        ExprKind::Bool(b) => Value::Bool(*b),
        ExprKind::Int(n) => Value::Int(*n),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Regex(r) => return Ok(V::Re(r)),
        ExprKind::Var(name) => vars.get(name),
        ExprKind::Call { name, args } => {
            let arg = match args.first().map(|a| eval(a, vars)).transpose()? {
                Some(Value::Str(s)) => s,
                _ => return Err(fail(e, format!("{name}() needs one string argument"))),
            };
            // A name chosen at run time fails closed, as upstream's envNameArg: an error, so
            // the route does not match, rather than a `null` a condition could test for.
            if arg.is_empty() {
                return Err(fail(e, format!("{name}() got an empty name")));
            }
            if !super::schema::build_env_allows(&arg) {
                return Err(fail(
                    e,
                    format!(
                        "{name}() may not read {arg:?}: not one of Buildkite's allowed BUILDKITE_* names"
                    ),
                ));
            }
            match (name.as_str(), vars.env(&arg)) {
                (_, Some(value)) => Value::Str(value),
                ("env", None) => Value::Str(String::new()),
                _ => Value::Null,
            }
        }
        ExprKind::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match eval(item, vars)? {
                    Value::Str(s) => out.push(s),
                    other => {
                        return Err(fail(
                            item,
                            format!("array element is {other:?}, not a string"),
                        ));
                    }
                }
            }
            Value::Array(out)
        }
        ExprKind::Not(inner) => Value::Bool(!truthy(&eval(inner, vars)?)),
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => {
            let branch = if truthy(&eval(cond, vars)?) {
                then
            } else {
                otherwise
            };
            return eval_any(branch, vars);
        }
        ExprKind::Binary { op, left, right } => binary(e, *op, left, right, vars)?,
    };
    Ok(V::Val(v))
}

fn binary(
    e: &Expr,
    op: BinOp,
    left: &Expr,
    right: &Expr,
    vars: &dyn Variables,
) -> Result<Value, ConditionError> {
    // `&&` and `||` short-circuit and yield an operand, as in Buildkite.
    match op {
        BinOp::And | BinOp::Or => {
            let l = eval(left, vars)?;
            return if truthy(&l) == (op == BinOp::Or) {
                Ok(l)
            } else {
                eval(right, vars)
            };
        }
        _ => {}
    }
    let l = eval_any(left, vars)?;
    let r = eval_any(right, vars)?;
    let b = match (op, &l, &r) {
        (BinOp::Eq, _, _) => equal(&l, &r),
        (BinOp::NotEq, _, _) => !equal(&l, &r),
        (BinOp::Match | BinOp::NotMatch, V::Val(v), V::Re(re)) => {
            let matched = match v {
                Value::Str(s) => re.compiled.is_match(s),
                // A missing value never matches: `=~` is false and `!~` is true.
                Value::Null => false,
                other => return Err(fail(left, format!("cannot match {other:?} with a regex"))),
            };
            matched == (op == BinOp::Match)
        }
        (BinOp::Includes, V::Val(Value::Null), _) => false,
        (BinOp::Includes, V::Val(Value::Array(items)), needle) => match needle {
            V::Val(Value::Null) => false,
            V::Val(Value::Str(s)) => items.contains(s),
            V::Re(re) => items.iter().any(|i| re.compiled.is_match(i)),
            V::Val(other) => return Err(fail(right, format!("cannot look for {other:?}"))),
        },
        _ => {
            return Err(fail(
                e,
                format!("wrong operand types for \"{}\"", op.symbol()),
            ));
        }
    };
    Ok(Value::Bool(b))
}

/// Equal when of the same type and value; null equals only null.
fn equal(l: &V<'_>, r: &V<'_>) -> bool {
    match (l, r) {
        (V::Val(a), V::Val(b)) => a == b,
        (V::Re(a), V::Re(b)) => a == b,
        _ => false,
    }
}

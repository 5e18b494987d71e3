//! Static checks against the caller's [`Schema`], so a mistyped condition fails when the
//! configuration loads instead of silently never matching.

use super::ast::{BinOp, Expr, ExprKind};
use super::{ConditionError, Schema, Type};

/// What an expression can produce. `Null` is the type of the literal `null` only; every
/// schema variable may also be null at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Null,
    Str,
    Int,
    Bool,
    Regex,
    StrArray,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Str => "a string",
            Ty::Int => "an integer",
            Ty::Bool => "a boolean",
            Ty::Regex => "a regular expression",
            Ty::StrArray => "a string array",
        }
    }
}

impl From<Type> for Ty {
    fn from(t: Type) -> Ty {
        match t {
            Type::String => Ty::Str,
            Type::Integer => Ty::Int,
            Type::Boolean => Ty::Bool,
            Type::StringArray => Ty::StrArray,
        }
    }
}

/// The built-in functions, as buildkite/conditional's type checker has them: each takes one
/// string. `env` gives "" for a missing name, `build.env` gives null.
pub(crate) const FUNCTIONS: [&str; 2] = ["env", "build.env"];

fn type_error(e: &Expr, expected: &str, found: Ty) -> ConditionError {
    ConditionError::Type {
        column: e.column,
        message: format!("expected {expected}, found {}", found.name()),
    }
}

/// Checks the whole condition, which must be a boolean.
pub(crate) fn check_condition(e: &Expr, schema: &Schema) -> Result<(), ConditionError> {
    expect(e, schema, &[Ty::Bool], "a boolean condition").map(|_| ())
}

fn expect(e: &Expr, schema: &Schema, allowed: &[Ty], what: &str) -> Result<Ty, ConditionError> {
    let t = check(e, schema)?;
    if allowed.contains(&t) {
        Ok(t)
    } else {
        Err(type_error(e, what, t))
    }
}

pub(crate) fn check(e: &Expr, schema: &Schema) -> Result<Ty, ConditionError> {
    Ok(match &e.kind {
        ExprKind::Null => Ty::Null,
        ExprKind::Bool(_) => Ty::Bool,
        ExprKind::Int(_) => Ty::Int,
        ExprKind::Str(_) => Ty::Str,
        ExprKind::Regex(_) => Ty::Regex,
        ExprKind::Var(name) => match schema.get(name) {
            Some(t) => t.into(),
            None => {
                return Err(ConditionError::UnknownVariable {
                    column: e.column,
                    name: name.clone(),
                    suggestions: schema.nearest(name),
                });
            }
        },
        ExprKind::Call { name, args } => {
            if !FUNCTIONS.contains(&name.as_str()) {
                return Err(ConditionError::UnknownFunction {
                    column: e.column,
                    name: name.clone(),
                });
            }
            let [arg] = args.as_slice() else {
                return Err(ConditionError::Type {
                    column: e.column,
                    message: format!("{name}() takes 1 argument, found {}", args.len()),
                });
            };
            if name == "env" && !schema.plain_env() {
                return Err(ConditionError::Type {
                    column: e.column,
                    message: "env() reads the environment of the agent that uploads a pipeline, which a webhook does not carry: use build.env(\"NAME\"), the build's environment".into(),
                });
            }
            // Buildkite's checks on a written name (buildkite/conditional conditional.go).
            if let ExprKind::Str(wanted) = &arg.kind {
                let plain = wanted.replace('$', "");
                let message = if wanted.starts_with('$') {
                    Some(if plain.is_empty() {
                        format!("the argument to {name}() should not include `$`")
                    } else {
                        format!(
                            "the argument to {name}() should not include `$`; did you mean {plain:?}?"
                        )
                    })
                } else if wanted.is_empty()
                    || !wanted
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    Some(format!(
                        "the argument to {name}() should be an environment variable name"
                    ))
                } else {
                    None
                };
                if let Some(message) = message {
                    return Err(ConditionError::Type {
                        column: arg.column,
                        message,
                    });
                }
            }
            if let ExprKind::Str(wanted) = &arg.kind
                && name == "build.env"
                && !super::schema::build_env_allows(wanted)
            {
                return Err(ConditionError::Type {
                    column: arg.column,
                    message: format!(
                        "build.env() reads the names the pipeline defines and only Buildkite's listed BUILDKITE_* ones; {wanted:?} is not one{}",
                        super::did_you_mean(
                            &super::schema::nearest(
                                wanted,
                                super::schema::BUILD_ENV_BUILDKITE_NAMES.iter().copied()
                            )
                            .iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                        )
                    ),
                });
            }
            expect(
                arg,
                schema,
                &[Ty::Str],
                &format!("a string argument to {name}()"),
            )?;
            Ty::Str
        }
        ExprKind::Array(items) => {
            for item in items {
                expect(item, schema, &[Ty::Str], "a string in the array")?;
            }
            Ty::StrArray
        }
        ExprKind::Not(inner) => {
            expect(inner, schema, &[Ty::Bool], "a boolean after \"!\"")?;
            Ty::Bool
        }
        ExprKind::Binary { op, left, right } => {
            check_binary(*op, left, right, schema)?;
            Ty::Bool
        }
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => {
            expect(cond, schema, &[Ty::Bool], "a boolean before \"?\"")?;
            compatible(then, otherwise, schema)?
        }
    })
}

fn check_binary(
    op: BinOp,
    left: &Expr,
    right: &Expr,
    schema: &Schema,
) -> Result<(), ConditionError> {
    let sym = op.symbol();
    match op {
        BinOp::And | BinOp::Or => {
            let what = format!("a boolean on each side of \"{sym}\"");
            expect(left, schema, &[Ty::Bool], &what)?;
            expect(right, schema, &[Ty::Bool], &what)?;
        }
        BinOp::Match | BinOp::NotMatch => {
            let what = format!("a string on the left of \"{sym}\"");
            expect(left, schema, &[Ty::Str, Ty::Null], &what)?;
            let what = format!("a regular expression on the right of \"{sym}\"");
            expect(right, schema, &[Ty::Regex], &what)?;
        }
        BinOp::Includes => {
            expect(
                left,
                schema,
                &[Ty::StrArray, Ty::Null],
                "an array before `includes`",
            )?;
            let allowed = [Ty::Str, Ty::Regex, Ty::Null];
            expect(
                right,
                schema,
                &allowed,
                "a string or regular expression after `includes`",
            )?;
        }
        BinOp::Eq | BinOp::NotEq => {
            compatible(left, right, schema)?;
            allowed_value(left, right, schema)?;
            allowed_value(right, left, schema)?;
        }
    }
    if op == BinOp::Includes
        && let ExprKind::Array(items) = &left.kind
    {
        for item in items {
            allowed_value(right, item, schema)?;
        }
    }
    Ok(())
}

/// When `var` is a variable with a fixed set of values (`build.state`) and `literal` a string
/// literal, the literal must be one of them: `build.state == "faild"` could never hold.
fn allowed_value(var: &Expr, literal: &Expr, schema: &Schema) -> Result<(), ConditionError> {
    let (ExprKind::Var(name), ExprKind::Str(value)) = (&var.kind, &literal.kind) else {
        return Ok(());
    };
    let Some(values) = schema.values(name) else {
        return Ok(());
    };
    if values.contains(&value.as_str()) {
        return Ok(());
    }
    let near = super::schema::nearest(value, values.iter().copied());
    let hint = if near.is_empty() {
        let all: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        format!(" (one of {})", all.join(", "))
    } else {
        let near: Vec<String> = near.iter().map(|v| format!("{v:?}")).collect();
        format!("; did you mean {}?", near.join(", "))
    };
    Err(ConditionError::Type {
        column: literal.column,
        message: format!("{value:?} is not a valid {name}{hint}"),
    })
}

/// Two sides that may be compared, or two branches of a ternary: the same type, or null on
/// either side. Returns the common type.
fn compatible(left: &Expr, right: &Expr, schema: &Schema) -> Result<Ty, ConditionError> {
    let l = check(left, schema)?;
    let r = check(right, schema)?;
    match (l, r) {
        (Ty::Null, t) | (t, Ty::Null) => Ok(t),
        (l, r) if l == r => Ok(l),
        (l, r) => Err(type_error(
            right,
            &format!("{} (or null) to match the left side", l.name()),
            r,
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::condition::{Condition, event_schema};

    #[test]
    fn enumerated_variables_refuse_values_they_never_take() {
        // From buildkite/conditional syntax_test.go ("validation rejects invalid enum
        // literal", "reversed enum comparison"), with our columns and hints.
        let cases = [
            (
                r#"build.state == "faillled""#,
                16,
                r#"did you mean "failed"?"#,
            ),
            (r#"build.state == "faild""#, 16, r#"did you mean "failed"?"#),
            (
                r#""faillled" == build.state"#,
                1,
                r#"did you mean "failed"?"#,
            ),
            (
                r#"build.state != "Passed""#,
                16,
                r#"did you mean "passed"?"#,
            ),
            (r#"build.source == "github""#, 17, r#"(one of "api", "ui""#),
            (
                r#"build.blocked_state == "pased""#,
                24,
                r#"did you mean "passed"?"#,
            ),
            (
                r#"["failed", "cancelled"] includes build.state"#,
                12,
                r#""canceled""#,
            ),
            (
                r#"true && build.state == "x""#,
                24,
                "not a valid build.state",
            ),
        ];
        for (src, column, hint) in cases {
            let err = Condition::compile(src, event_schema()).expect_err(src);
            assert_eq!(err.column(), column, "{src}: {err}");
            let text = err.to_string();
            assert!(text.contains("is not a valid build."), "{src}: {text}");
            assert!(text.contains(hint), "{src}: {text}");
        }
        for src in [
            r#"build.state == "failed""#,
            r#""passed" != build.state"#,
            r#"build.state == null"#,
            r#"build.blocked_state == "running""#,
            r#"build.source == "trigger_job""#,
            r#"["failed", "canceled"] includes build.state"#,
            r#"build.state == build.branch"#,
            r#"build.branch == "faild""#,
        ] {
            Condition::compile(src, event_schema()).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }
}

//! Property tests: the parser never panics, and printing a tree parses back to it.

use proptest::prelude::*;

use super::*;

const TOKENS: &[&str] = &[
    "==",
    "!=",
    "=~",
    "!~",
    "&&",
    "||",
    "!",
    "?",
    ":",
    ",",
    "(",
    ")",
    "[",
    "]",
    "includes",
    "true",
    "false",
    "null",
    "1",
    "007",
    "build.branch",
    "env",
    "build.env",
    "\"s\"",
    "'q'",
    "/re/",
    "/re/i",
    "/[/",
    "\"",
    "'",
    "/",
    "//",
    "\n",
    "\\",
    "$",
    "=",
    "&",
    "|",
    "..",
    ".",
    "\"\\x41\"",
    "\"\\400\"",
    "é",
];

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,5}(\\.[a-z_][a-z0-9_]{0,4}){0,2}".prop_filter("keyword", |s| {
        !["true", "false", "null", "includes"].contains(&s.as_str())
    })
}

fn regex_lit() -> impl Strategy<Value = Expr> {
    ("[a-z.^$|*+?]{1,6}", prop_oneof![Just(""), Just("i")])
        .prop_filter_map("invalid regex", |(pattern, flags)| {
            Condition::parse(&format!("/{pattern}/{flags}")).ok()
        })
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(ExprKind::Null),
        any::<bool>().prop_map(ExprKind::Bool),
        (0..=i64::MAX).prop_map(ExprKind::Int),
        "[a-z\"'\\\\$\n\t\u{1}é ]{0,6}".prop_map(ExprKind::Str),
        name().prop_map(ExprKind::Var),
    ]
    .prop_map(|k| Expr::new(k, 1))
    .boxed()
    .prop_union(regex_lit().boxed())
}

fn expr() -> impl Strategy<Value = Expr> {
    let ops = [
        BinOp::Or,
        BinOp::And,
        BinOp::Eq,
        BinOp::NotEq,
        BinOp::Match,
        BinOp::NotMatch,
        BinOp::Includes,
    ];
    leaf().prop_recursive(5, 48, 3, move |inner| {
        let b = |e: Expr| Box::new(e);
        prop_oneof![
            (name(), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(name, args)| ExprKind::Call { name, args }),
            prop::collection::vec(inner.clone(), 0..3).prop_map(ExprKind::Array),
            inner.clone().prop_map(move |e| ExprKind::Not(b(e))),
            (
                prop::sample::select(ops.to_vec()),
                inner.clone(),
                inner.clone()
            )
                .prop_map(move |(op, l, r)| ExprKind::Binary {
                    op,
                    left: b(l),
                    right: b(r)
                }),
            (inner.clone(), inner.clone(), inner).prop_map(move |(c, t, o)| ExprKind::Ternary {
                cond: b(c),
                then: b(t),
                otherwise: b(o),
            }),
        ]
        .prop_map(|k| Expr::new(k, 1))
    })
}

proptest! {
    #[test]
    fn parser_never_panics_on_any_string(src in "\\PC{0,80}") {
        let _ = Condition::compile(&src, &Schema::new().with("build.branch", Type::String));
    }

    #[test]
    fn parser_never_panics_on_token_soup(
        parts in prop::collection::vec(prop::sample::select(TOKENS), 0..40),
        sep in prop_oneof![Just(""), Just(" ")],
    ) {
        let src = parts.join(sep);
        let schema = Schema::new().with("build.branch", Type::String);
        if let Ok(c) = Condition::compile(&src, &schema) {
            // Whatever compiles also evaluates without panicking and prints back the same.
            let _ = c.eval(&|_: &str| Value::Null);
            let reparsed = Condition::parse(&c.to_string()).ok();
            prop_assert_eq!(reparsed.as_ref(), Some(c.expr()));
        }
    }

    #[test]
    fn printed_trees_parse_back(e in expr()) {
        let printed = e.to_string();
        let parsed = Condition::parse(&printed);
        prop_assert_eq!(parsed.as_ref().ok(), Some(&e), "printed as {} -> {:?}", printed, parsed);
    }
}

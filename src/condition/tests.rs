//! Table-driven tests. Most cases come from buildkite/conditional (commit af63d27), which
//! ports Buildkite's server specs; each table names its source file.

use super::*;

fn schema() -> Schema {
    Schema::new()
        .with("build.branch", Type::String)
        .with("build.tag", Type::String)
        .with("build.message", Type::String)
        .with("build.number", Type::Integer)
        .with("build.fixed", Type::Boolean)
        .with("build.pull_request.draft", Type::Boolean)
        .with("build.creator.teams", Type::StringArray)
        .with("pipeline.default_branch", Type::String)
}

struct Vars;

impl Variables for Vars {
    fn get(&self, path: &str) -> Value {
        match path {
            "build.branch" => Value::Str("features/release-123".into()),
            "build.tag" => Value::Str("v1.0".into()),
            "build.message" => Value::Str("llamas [skip TESTS]".into()),
            "build.number" => Value::Int(42),
            "build.creator.teams" => Value::Array(vec!["deploy".into(), "ops".into()]),
            "pipeline.default_branch" => Value::Str("main".into()),
            _ => Value::Null,
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        match name {
            "branch" => Some("main".into()),
            "BUILDKITE_TAG" => Some("v1.0".into()),
            "USE_CREATOR" => Some("true".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }
}

fn run(src: &str) -> Result<bool, ConditionError> {
    let c = Condition::compile(src, &schema())?;
    Ok(c.eval(&Vars))
}

fn assert_evals(cases: &[(&str, bool)]) {
    for (src, want) in cases {
        match run(src) {
            Ok(got) => assert_eq!(got, *want, "{src}"),
            Err(e) => panic!("{src}: {e}"),
        }
    }
}

#[test]
fn evaluates_syntax_reference() {
    // Cases from buildkite/conditional syntax_test.go (Buildkite docs and parser spec).
    assert_evals(&[
        ("12345 == 12345", true),
        (r#""feature-branch" != "main""#, true),
        (r#""v1.0" =~ /^v[0-9]+\.0$/"#, true),
        (r#""build all" !~ /skip tests/"#, true),
        ("true || false && false", true),
        (r#"["main", "production"] includes "production""#, true),
        (r#"'feature-branch' == "feature-branch""#, true),
        ("true == true && false == false && null == null", true),
        ("(true || false) && false", false),
        ("!false", true),
        ("// ignored\ntrue && true\n// also ignored", true),
        ("true // ignores comments on the same line", true),
    ]);
}

#[test]
fn evaluates_values_nulls_and_ternaries() {
    // Cases from buildkite/conditional eval_test.go.
    assert_evals(&[
        ("true", true),
        ("false", false),
        ("1 == 1", true),
        ("1 != 2", true),
        ("true == null", false),
        ("null == null", true),
        ("null != null", false),
        (r#"env("branch") == "main""#, true),
        (r#"env("branch") != "production""#, true),
        (r#"["eggs", "ham", "coffee"] includes "ham""#, true),
        (r#"["eggs", "ham", "coffee"] includes "fruit""#, false),
        (r#"["a"] == ["a"]"#, true),
        ("[] == []", true),
        (r#"["a"] == null"#, false),
        (r#"null == ["a"]"#, false),
        ("build.creator.teams includes /dep/", true),
        (r#"null includes "fruit""#, false),
        ("null =~ /main|development/", false),
        ("null !~ /main|development/", true),
        (r#""a" == "d" || "a" == "b" && "a" == "a""#, false),
        (r#"("a" == "d" || "a" == "b") && "a" == "a""#, false),
        ("1 == 2 ? 3 == 4 : 5 == 5", true),
        ("1 == 1 ? 3 == 4 : 5 == 5", false),
        ("false ? true : false ? true : true", true),
        (
            r#"(env("USE_CREATOR") == "true" ? build.creator.teams : ["deploy"]) includes "deploy""#,
            true,
        ),
        ("build.fixed", false),
        ("true ? null : true", false),
        ("false ? true : null", false),
        ("!build.pull_request.draft", true),
        (
            "build.pull_request.draft != null && build.pull_request.draft",
            false,
        ),
        (
            "build.pull_request.draft == null ? false : build.pull_request.draft",
            false,
        ),
        ("build.pull_request.draft || false", false),
        ("build.tag == null", false),
        (
            r#""line\nfeed" == "line
feed""#,
            true,
        ),
        (r#""hex\x41 octal\141" == "hexA octala""#, true),
        (r#"'\n' == "\\n""#, true),
    ]);
    // Ours: the two env functions differ on a missing name; an empty value is "".
    assert_evals(&[
        (r#"env("MISSING") == """#, true),
        (r#"build.env("MISSING") == null"#, true),
        (r#"build.env("EMPTY") == """#, true),
        (
            "build.number == 42 && build.branch != pipeline.default_branch",
            true,
        ),
    ]);
}

#[test]
fn evaluates_regexes() {
    // Cases from buildkite/conditional regex_test.go.
    assert_evals(&[
        (r"build.branch =~ /^features\//", true),
        (r"build.branch =~ /\/release-123$/", true),
        // `'fee$'`: a `$` in double quotes is shell substitution, which we refuse.
        (r"'fee$' =~ /fee\$/", true),
        (r#""fee" =~ /fee\$/"#, false),
        (r"build.tag =~ /^v[0-9]+\.0$/", true),
        (r#"build.env("BUILDKITE_TAG") =~ /^v[0-9]+\.0$/"#, true),
        (r"build.message !~ /\[skip tests\]/", true),
        (r"build.message =~ /\[skip tests\]/i", true),
        (r#""v123" =~ /^v[[:digit:]]+$/"#, true),
        (r#""(?<=a)" =~ /\(\?<=a\)/"#, true),
        (r#""{1,3}+" =~ /\{1,3\}\+/"#, true),
        (r#""?" =~ /[(?<=]/"#, true),
        (r#""}}}" =~ /}+/"#, true),
        (r#""?" =~ /[[:digit:](?<=]/"#, true),
        (r#""]" =~ /[](?<=]/"#, true),
        (r#""ab" =~ /a(?# (?<= literal )b/"#, true),
    ]);
}

#[test]
fn evaluation_errors_fail_closed() {
    // From buildkite/conditional eval_test.go: a null inside an array literal is an error.
    let c = Condition::compile(r#"[build.env("MISSING")] includes "x""#, &schema()).unwrap();
    assert!(matches!(
        c.eval_value(&Vars),
        Err(ConditionError::Eval { column: 2, .. })
    ));
    assert!(!c.eval(&Vars));
    // A lookup that breaks the schema: "=~" on an integer.
    let c = Condition::compile("build.branch =~ /x/", &schema()).unwrap();
    assert!(!c.eval(&|_: &str| Value::Int(1)));
}

#[test]
fn rejects_syntax_and_regex_errors() {
    // Cases from buildkite/conditional syntax_test.go, regex_test.go and parser_test.go;
    // the columns are ours.
    let cases: &[(&str, usize)] = &[
        ("nope != == one", 9),
        (r#""main" =~ /main/x"#, 17),
        (r#"build..branch == "main""#, 1),
        ("foo.", 1),
        (r#""\400" == """#, 2),
        (r#"["main"] @> build.branch"#, 10),
        (r#""main" =~ /main"#, 11),
        // Regex features Buildkite refuses: the column is the feature's.
        (r#""ab" =~ /(?<=a)b/"#, 10),
        (r#""cb" =~ /(?<!a)b/"#, 10),
        (r#""aa" =~ /(?>a*)a/"#, 10),
        (r#""a" =~ /a?+/"#, 10),
        (r#""aaa" =~ /a*+/"#, 12),
        (r#""aaa" =~ /a++/"#, 12),
        (r#""aaa" =~ /a{1,3}+/"#, 16),
        (r#""aaa" =~ /a{3}+/"#, 14),
        (r#""aaa" =~ /a{2,}+/"#, 15),
        (r#""group" =~ /(?<name>group)/"#, 13),
        (r#""group" =~ /(?P<name>group)/"#, 13),
        (r#""group" =~ /(?'name'group)/"#, 13),
        (r#""a" =~ /(?(1)a|b)/"#, 9),
        (r#""ab" =~ /a(?#\)(?<name>b)/"#, 16),
        (r#""from prison \"#, 1),
        ("'mad lad opening single quotes", 1),
        (r#"build.creator.teams "deploy""#, 21),
        (r"build.message !~ /\[skip tests\]/ extra", 35),
        ("", 1),
        ("  // only a comment", 1),
        // Ours.
        (r#"build.branch == "#, 17),
        ("(true", 6),
        ("true && || false", 9),
        ("true ? false", 13),
        ("a = b", 3),
        ("$branch == \"main\"", 1),
        (r#""deploy-${branch}" == "x""#, 9),
        ("010 == 8", 1),
        ("99999999999999999999 == 1", 1),
        ("env(\"x\"", 8),
        ("[1, 2", 6),
        (r#""\xff" == "x""#, 2),
    ];
    for (src, column) in cases {
        match Condition::compile(src, &schema()) {
            Ok(_) => panic!("{src}: expected an error"),
            Err(e) => assert_eq!(e.column(), *column, "{src}: {e}"),
        }
    }
}

#[test]
fn syntax_errors_say_what_was_expected() {
    let err = Condition::compile("build.branch == ", &schema()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"column 17: expected a value after "==", found end of expression"#
    );
    let err = Condition::compile("(true", &schema()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"column 6: expected ")" after `true`, found end of expression"#
    );
}

#[test]
fn rejects_type_and_name_errors() {
    // Cases from buildkite/conditional syntax_test.go and eval_test.go; the columns are ours.
    let cases: &[(&str, usize)] = &[
        (r#"env() == """#, 1),
        (r#"build.env("FOO", "BAR") == null"#, 1),
        (r#"env(1) == """#, 5),
        (r#"not_a_variable == "x""#, 1),
        (r#"not_a_function() == "x""#, 1),
        (r#""d" =~ "hello""#, 8),
        ("true =~ /true/", 1),
        (r#"1 == "one""#, 6),
        (r#"true == "true""#, 9),
        (r#""not-an-array" includes "one""#, 1),
        (r#"(true ? "string" : 123) == null"#, 20),
        (r#"false && missing.value == "x""#, 10),
        (r#"true || missing.value == "x""#, 9),
        (r#""not boolean""#, 1),
        ("null", 1),
        // Ours.
        ("!build.branch", 2),
        ("build.number == build.branch", 17),
        (r#"[build.number] includes "1""#, 2),
        ("build.creator.teams includes 1", 30),
        ("build.branch =~ build.tag", 17),
    ];
    for (src, column) in cases {
        match Condition::compile(src, &schema()) {
            Ok(_) => panic!("{src}: expected an error"),
            Err(e) => assert_eq!(e.column(), *column, "{src}: {e}"),
        }
    }
}

#[test]
fn unknown_variables_suggest_nearest_names() {
    let err = Condition::compile(r#"true && build.brnch == "main""#, &schema()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "column 9: unknown variable `build.brnch`; did you mean build.branch?"
    );
}

#[test]
fn precedence_matches_buildkite() {
    // Cases from buildkite/conditional parser_test.go: each input and its fully grouped form
    // parse to the same tree.
    let cases = [
        ("!a", "(!a)"),
        ("!(true == true)", "(!(true == true))"),
        ("foo.bar.baz == true", "(foo.bar.baz == true)"),
        (
            "foo.bar == true && bar.baz == false",
            "((foo.bar == true) && (bar.baz == false))",
        ),
        ("a || b && c", "(a || (b && c))"),
        ("a && b || c", "((a && b) || c)"),
        ("env(env(LLAMAS)) == true", "(env(env(LLAMAS)) == true)"),
        ("a =~ /a/ && b =~ /b/", "((a =~ /a/) && (b =~ /b/))"),
        ("true ? false : true", "(true ? false : true)"),
        (
            "a || b ? c || d : e || f ? g : h",
            "((a || b) ? (c || d) : ((e || f) ? g : h))",
        ),
        (
            "foo(env(LLAMAS) == 'test' || true)",
            r#"foo(((env(LLAMAS) == "test") || true))"#,
        ),
        // Ours: comparisons share one left-associative level; `!` binds tighter.
        ("a == b != c", "((a == b) != c)"),
        ("!a == b", "((!a) == b)"),
        ("x includes y == z", "((x includes y) == z)"),
    ];
    for (input, grouped) in cases {
        let a = Condition::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        let b = Condition::parse(grouped).unwrap_or_else(|e| panic!("{grouped}: {e}"));
        assert_eq!(a, b, "{input}");
        assert_eq!(
            Condition::parse(&a.to_string()).unwrap(),
            a,
            "{input} printed as {a}"
        );
    }
}

#[test]
fn prints_canonically() {
    let cases = [
        ("a&&(b||c)", "a && (b || c)"),
        ("(a && b) || c", "a && b || c"),
        ("!(a == b)", "!(a == b)"),
        ("(a ? b : c) ? d : e", "(a ? b : c) ? d : e"),
        (
            r#"build.env( 'X' )=="a\"b\\\$""#,
            r#"build.env("X") == "a\"b\\\$""#,
        ),
        (
            r"[ 'a' , 'b' ] includes /x\/y/i",
            r#"["a", "b"] includes /x\/y/i"#,
        ),
    ];
    for (input, want) in cases {
        let printed = Condition::parse(input).unwrap().to_string();
        assert_eq!(printed, want, "{input}");
    }
}

#[test]
fn limits_nesting_depth() {
    let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
    assert!(matches!(
        Condition::parse(&deep),
        Err(ConditionError::TooDeep { .. })
    ));
    let bangs = format!("{}true", "!".repeat(1000));
    assert!(matches!(
        Condition::parse(&bangs),
        Err(ConditionError::TooDeep { .. })
    ));
    let chain = vec!["true"; 10_000].join(" && ");
    assert!(matches!(
        Condition::parse(&chain),
        Err(ConditionError::TooDeep { .. })
    ));
    let ok = format!("{}true{}", "(".repeat(30), ")".repeat(30));
    assert!(Condition::parse(&ok).is_ok());
}

#[test]
fn compiles_once_and_evaluates_many_times() {
    let c = Condition::compile("build.branch =~ /^main$/", &schema()).unwrap();
    assert_eq!(c.source(), "build.branch =~ /^main$/");
    for (branch, want) in [("main", true), ("mainline", false), ("main", true)] {
        let vars = move |p: &str| match p {
            "build.branch" => Value::Str(branch.into()),
            _ => Value::Null,
        };
        assert_eq!(c.eval(&vars), want, "{branch}");
    }
    assert!(!c.eval(&|_: &str| Value::Null));
}

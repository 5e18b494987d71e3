//! Buildkite conditional expressions: arbitrary text, compiled against the variables of a
//! webhook event and evaluated against an arbitrary event.
//!
//! Input: the expression, a NUL byte, then a webhook body. Never panics; whatever compiles
//! evaluates (to true or false) and prints as text that parses back to the same tree.

#![no_main]

use kitebridge::condition::{Condition, EventVariables, event_schema};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (expr, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(expr) = std::str::from_utf8(expr) else {
        return;
    };
    // Without a schema (syntax only) and with one (types and names): no panic either way.
    let _ = Condition::parse(expr);
    let Ok(condition) = Condition::compile(expr, event_schema()) else {
        return;
    };
    let printed = condition.expr().to_string();
    let again = Condition::parse(&printed).expect("a printed expression parses");
    assert_eq!(&again, condition.expr(), "{expr:?} printed as {printed:?}");
    if let Some(event) = kitebridge_fuzz::event(body) {
        let _ = condition.eval(&EventVariables::new(&event));
    }
});

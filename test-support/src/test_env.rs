//! The one rule for tests that need this machine's privileges or kernel (root for network and
//! cgroup namespaces, kernel BTF): without them a test skips with a message naming it — or fails
//! when `KUBETUNE_REQUIRE_ROOT=1`, which CI sets, so a green CI run means those tests ran.
//! Used by the agent's and the e2e crate's tests.

/// Environment variable that turns skips into failures.
pub const REQUIRE_ENV: &str = "KUBETUNE_REQUIRE_ROOT";

/// What a test does about a missing requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The requirement holds: run.
    Run,
    /// Skip, with this message.
    Skip(String),
    /// Fail, with this message.
    Fail(String),
}

/// The rule (pure): run when `available`, else fail when `required`, else skip.
pub fn gate(test: &str, need: &str, available: bool, required: bool) -> Gate {
    match (available, required) {
        (true, _) => Gate::Run,
        (false, true) => Gate::Fail(format!(
            "{test}: needs {need}, and {REQUIRE_ENV}=1 forbids skipping it"
        )),
        (false, false) => Gate::Skip(format!(
            "skipping {test}: needs {need} (set {REQUIRE_ENV}=1 to fail instead)"
        )),
    }
}

/// The running test's name (libtest names each test's thread after the test).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string()
}

/// Applies [`gate`] for the running test: `true` = run it; `false` = it was skipped (message on
/// stderr); panics when skipping is forbidden.
pub fn require(need: &str, available: bool) -> bool {
    let required = std::env::var(REQUIRE_ENV).as_deref() == Ok("1");
    match gate(&current_test(), need, available, required) {
        Gate::Run => true,
        Gate::Skip(msg) => {
            eprintln!("{msg}");
            false
        }
        Gate::Fail(msg) => panic!("{msg}"),
    }
}

/// [`require`] root, for `why` (e.g. "network namespaces").
pub fn require_root(why: &str) -> bool {
    require(&format!("root ({why})"), crate::is_root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_fails_or_runs() {
        assert_eq!(gate("t", "root", true, true), Gate::Run);
        assert_eq!(gate("t", "root", true, false), Gate::Run);
        let Gate::Fail(m) = gate("mod::t", "root (netns)", false, true) else {
            panic!()
        };
        assert!(m.contains("mod::t") && m.contains("root (netns)"), "{m}");
        let Gate::Skip(m) = gate("mod::t", "root", false, false) else {
            panic!()
        };
        assert!(m.starts_with("skipping mod::t: needs root"), "{m}");
    }

    #[test]
    fn names_the_running_test() {
        assert!(
            current_test().ends_with("names_the_running_test"),
            "{}",
            current_test()
        );
    }
}

//! kubetune-agent.
pub mod probe;

//! kubetune-agent (work in progress).

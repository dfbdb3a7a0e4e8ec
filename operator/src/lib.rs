//! kubetune-operator (work in progress).

#![no_std]
//! Kernel programs (work in progress).

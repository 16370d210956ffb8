//! Rust declarations of the kernels' C launchers (`cuda/launchers.h`), written by bindgen.
#![allow(non_camel_case_types, dead_code)]

include!(concat!(env!("OUT_DIR"), "/launchers.rs"));

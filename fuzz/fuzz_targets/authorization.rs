#![no_main]
//! See `tether_ingress::fuzzing::authorization` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_ingress::fuzzing::authorization(data));

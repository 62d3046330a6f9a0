#![no_main]
//! See `tether_ingress::fuzzing::outreach` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_ingress::fuzzing::outreach(data));

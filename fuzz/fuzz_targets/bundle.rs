#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = datadonor_fuzz::targets::bundle(data);
});

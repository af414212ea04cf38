//! Host-side guards that must hold in the build the tests run: `cargo test --release` compiles
//! out every `debug_assert`, so the dispatch aliasing check is a real assert, made before the
//! recorder's lock so the refused dispatch leaves the device usable.

mod common;

use std::panic::AssertUnwindSafe;

/// The uniform of `shaders/elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    len: u32,
    b_len: u32,
    rows: u32,
    cols: u32,
    factor: f32,
    _pad: [u32; 3],
}

#[test]
fn a_dispatch_whose_output_aliases_an_input_is_refused_and_the_device_stays_usable() {
    // A device of its own: this test panics on purpose.
    let gpu = common::fresh_gpu();
    let add = gpu.kernel(&clusterclip::shader!("elementwise"), "add");
    let n = 300; // not a multiple of the workgroup size
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 0.5 * i as f32 - 7.0).collect();
    let (ga, gb) = (gpu.upload_f32(&a), gpu.upload_f32(&b));
    let params = ElementwiseParams {
        len: n as u32,
        b_len: n as u32,
        rows: 0,
        cols: 0,
        factor: 0.0,
        _pad: [0; 3],
    };
    // In place: `out` (binding 3, read_write) is the buffer of `a` (binding 1, read).
    let in_place = std::panic::catch_unwind(AssertUnwindSafe(|| {
        gpu.dispatch_linear(&add, &params, &[("a", &ga), ("b", &gb), ("out", &ga)], n)
    }));
    let payload = in_place.expect_err("a written binding aliasing a read one must be refused");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("elementwise::add") && message.contains("aliases"),
        "{message}"
    );
    // The refusal came before the recorder's lock: the same device still adds correctly.
    let out = gpu.alloc(n);
    gpu.dispatch_linear(&add, &params, &[("a", &ga), ("b", &gb), ("out", &out)], n);
    let sum = gpu.read_f32(&out).unwrap();
    let expected: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(sum, expected);
}

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(AssertUnwindSafe(f)).expect_err("must be refused");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_dispatch_binds_each_used_binding_by_name_exactly_once() {
    let gpu = common::fresh_gpu();
    let add = gpu.kernel(&clusterclip::shader!("elementwise"), "add");
    let scale = gpu.kernel(&clusterclip::shader!("elementwise"), "scale");
    let n = 70;
    let (a, b, out) = (gpu.upload_f32(&vec![1.0; n]), gpu.alloc(n), gpu.alloc(n));
    let params = ElementwiseParams {
        len: n as u32,
        b_len: n as u32,
        rows: 0,
        cols: 0,
        factor: 2.0,
        _pad: [0; 3],
    };
    let missing =
        panic_message(|| gpu.dispatch_linear(&add, &params, &[("a", &a), ("out", &out)], n));
    assert!(
        missing.contains("elementwise::add") && missing.contains("`b` not given"),
        "{missing}"
    );
    let unknown = panic_message(|| {
        gpu.dispatch_linear(&add, &params, &[("a", &a), ("bb", &b), ("out", &out)], n)
    });
    assert!(
        unknown.contains("no binding named `bb`") && unknown.contains("a, b, out"),
        "{unknown}"
    );
    let twice = panic_message(|| {
        let buffers = [("a", &a), ("b", &b), ("b", &b), ("out", &out)];
        gpu.dispatch_linear(&add, &params, &buffers, n)
    });
    assert!(twice.contains("`b` given twice"), "{twice}");
    // `scale` reads no `b`: its layout has no such binding, so passing one is an error too.
    let unused = panic_message(|| {
        gpu.dispatch_linear(&scale, &params, &[("a", &a), ("b", &b), ("out", &out)], n)
    });
    assert!(
        unused.contains("elementwise::scale: no binding named `b`"),
        "{unused}"
    );
    // The refusals came before the recorder's lock: the device still scales.
    gpu.dispatch_linear(&scale, &params, &[("a", &a), ("out", &out)], n);
    assert_eq!(gpu.read_f32(&out).unwrap(), vec![2.0; n]);
}

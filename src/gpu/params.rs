//! Kernel params: the small uniform struct at binding 0 of a shader, declared in Rust with
//! [`crate::kernel_params!`] so a test can hold its layout against the WGSL twin's
//! (tests/shaders.rs, through [`crate::params_layouts`]).

/// Where the fields of a Rust params struct sit.
#[derive(Clone, Debug)]
pub struct ParamsLayout {
    /// The shader (`shaders/NAME.wgsl`) whose uniform struct this mirrors.
    pub shader: &'static str,
    pub rust_type: &'static str,
    /// (name, byte offset, byte size) of each field, in declaration order.
    pub fields: Vec<(&'static str, usize, usize)>,
    /// Bytes of the whole struct.
    pub size: usize,
}

/// A params struct declared with [`crate::kernel_params!`].
pub trait KernelParams: bytemuck::Pod {
    fn layout() -> ParamsLayout;
}

/// Declares a kernel's params struct (`#[repr(C)]`, `bytemuck::Pod`) for `shaders/NAME.wgsl`
/// and implements [`KernelParams`] from the same field list, so no field escapes the check:
///
/// ```ignore
/// kernel_params! {
///     /// The uniform of `shaders/reduce.wgsl`.
///     pub(crate) struct Params for "reduce" { outer: u32, n: u32, inner: u32, factor: f32 }
/// }
/// ```
#[macro_export]
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident for $shader:literal {
            $($(#[$field_meta:meta])* $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_meta])* $field: $ty),*
        }

        impl $crate::gpu::KernelParams for $name {
            fn layout() -> $crate::gpu::ParamsLayout {
                $crate::gpu::ParamsLayout {
                    shader: $shader,
                    rust_type: concat!(module_path!(), "::", stringify!($name)),
                    fields: vec![$((
                        stringify!($field),
                        ::std::mem::offset_of!($name, $field),
                        ::std::mem::size_of::<$ty>(),
                    )),*],
                    size: ::std::mem::size_of::<$name>(),
                }
            }
        }
    };
}

//! One kernel body, compiled for the widest vector unit the CPU has.
//!
//! The crate is built for baseline x86-64 (SSE2, 4 lanes) so that one binary runs on any machine,
//! which leaves the fused cells' loops at a quarter of what an AVX-512 core does. [`per_isa!`]
//! compiles a function body three times — AVX-512, AVX2 + FMA, baseline — and picks one at run
//! time. The arithmetic is the same IEEE operations in the same order at every width (Rust never
//! contracts `a * b + c` into an FMA, and no reduction is reassociated), so the three versions
//! return the same bits and a run's figures do not depend on the machine's vector unit.

/// Defines `fn $name(args)` (no return value) whose body runs in the widest of AVX-512,
/// AVX2 + FMA and baseline that the CPU supports, and `fn $baseline(args)`, the baseline alone,
/// against which tests hold the wide versions to the same bits.
macro_rules! per_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident, baseline $baseline:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        #[inline(always)]
        #[cfg_attr(not(test), allow(dead_code))]
        $vis fn $baseline($($arg: $ty),*) $body

        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) {
                $baseline($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the features `v4` was compiled for were detected on this CPU.
                    #[allow(unsafe_code)]
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`'s features.
                    #[allow(unsafe_code)]
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use per_isa;

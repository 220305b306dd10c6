//! The bundled rules' global allocator on `wasm32`: a bump allocator.
//!
//! The host gives every call a fresh instance and throws it away after the
//! answer, so a rule's heap never needs to give memory back: allocating is
//! moving a pointer, freeing is forgetting (except the most recent block,
//! which is taken back, so a growing `Vec` or `String` grows in place).
//! The heap starts at `__heap_base`, in the spare end of the module's first
//! memory, and grows the memory only when that is used up. Rust's default
//! allocator on `wasm32-unknown-unknown` (dlmalloc) instead grows the
//! memory on its very first allocation, and growing a memory costs the host
//! a few microseconds per fresh instance (BENCHMARKS.md, "Rule runtime").
//! A rule that allocates more than its memory budget fails as before.
//!
//! Natively (the rules' unit tests) this crate is empty.

#![no_std]

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // a global allocator is unsafe by definition
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32;
    use core::cell::Cell;
    use core::ptr;

    const PAGE: usize = 65_536;

    unsafe extern "C" {
        /// The first byte after the module's data and stack (wasm-ld).
        static __heap_base: u8;
    }

    pub struct Bump {
        /// The next free byte; 0 before the first allocation.
        next: Cell<usize>,
        /// Where the most recent block starts.
        last: Cell<usize>,
    }

    // SAFETY: wasm32 without the threads proposal has one thread.
    unsafe impl Sync for Bump {}

    impl Bump {
        const fn new() -> Self {
            Bump { next: Cell::new(0), last: Cell::new(0) }
        }

        /// Makes the memory at least `end` bytes long.
        fn reserve(end: usize) -> bool {
            let size = wasm32::memory_size(0) * PAGE;
            end <= size || wasm32::memory_grow(0, (end - size).div_ceil(PAGE)) != usize::MAX
        }

        fn is_last(&self, ptr: *mut u8, size: usize) -> bool {
            ptr as usize == self.last.get() && ptr as usize + size == self.next.get()
        }
    }

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut next = self.next.get();
            if next == 0 {
                next = ptr::addr_of!(__heap_base) as usize;
            }
            let Some(start) = next.checked_add(layout.align() - 1).map(|n| n & !(layout.align() - 1)) else {
                return ptr::null_mut();
            };
            let Some(end) = start.checked_add(layout.size()) else {
                return ptr::null_mut();
            };
            if !Self::reserve(end) {
                return ptr::null_mut();
            }
            self.last.set(start);
            self.next.set(end);
            start as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if self.is_last(ptr, layout.size()) {
                self.next.set(ptr as usize);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if self.is_last(ptr, layout.size()) {
                let Some(end) = (ptr as usize).checked_add(new_size) else {
                    return ptr::null_mut();
                };
                if !Self::reserve(end) {
                    return ptr::null_mut();
                }
                self.next.set(end);
                return ptr;
            }
            // SAFETY: as `GlobalAlloc::realloc`'s default.
            unsafe {
                let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
                if !new.is_null() {
                    ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                }
                new
            }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Bump = Bump::new();
}

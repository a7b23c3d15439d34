//! The filters' global allocator on wasm32: free lists of small blocks on top of the standard
//! allocator (dlmalloc).
//!
//! A request allocates the same few small blocks every time: each property and header value the
//! host returns is allocated through the guest (`proxy_on_memory_allocate`) and freed right after.
//! dlmalloc's bins cost a few hundred wasm instructions per allocation and free; a free list of
//! blocks of the same size class costs a few dozen. Blocks of at most [`MAX_SMALL`] bytes are
//! rounded up to a power of two and, when freed, kept on their class's list for the next
//! allocation instead of being returned; larger or over-aligned ones go straight to dlmalloc. The
//! memory kept is bounded by the largest number of small blocks live at once.
//!
//! The module is single-threaded (wasm32-wasip1 without the atomics feature has no threads),
//! which is what makes the unsynchronized lists sound.
#![allow(unsafe_code)] // a global allocator is an unsafe trait by nature

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr::null_mut;

/// Largest block served from the free lists.
pub const MAX_SMALL: usize = 256;
/// Size classes: 8, 16, 32, 64, 128, 256 bytes.
const CLASSES: usize = 6;
/// Alignment of every small block (enough for any type the filters allocate small).
const ALIGN: usize = 8;

/// Free-list heads, one per size class; a free block holds the address of the next.
pub struct SmallBlocks {
    heads: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: the target has no threads (see the module comment), so no two accesses can race.
unsafe impl Sync for SmallBlocks {}

impl SmallBlocks {
    pub const fn new() -> Self {
        Self {
            heads: UnsafeCell::new([null_mut(); CLASSES]),
        }
    }
}

impl Default for SmallBlocks {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class of a layout, if it is small.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > ALIGN {
        return None;
    }
    let rounded = layout.size().max(8).next_power_of_two();
    Some(rounded.trailing_zeros() as usize - 3)
}

fn class_layout(class: usize) -> Option<Layout> {
    Layout::from_size_align(8 << class, ALIGN).ok()
}

// SAFETY: small blocks come from `System` with the class's layout, are handed out to one owner at
// a time, and go back on their class's list only through `dealloc` with a layout of that class.
unsafe impl GlobalAlloc for SmallBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded; `c < CLASSES` by construction of `class`.
        unsafe {
            let heads = &mut *self.heads.get();
            let head = heads[c];
            if !head.is_null() {
                heads[c] = *(head as *mut *mut u8);
                return head;
            }
            match class_layout(c) {
                Some(l) => System.alloc(l),
                None => null_mut(),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: allocated by `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: `ptr` is a block of class `c` (at least 8 bytes, 8-aligned) no longer in use;
        // its first word now links it into the list.
        unsafe {
            let heads = &mut *self.heads.get();
            *(ptr as *mut *mut u8) = heads[c];
            heads[c] = ptr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_powers_of_two() {
        let c = |size, align| class(Layout::from_size_align(size, align).unwrap());
        assert_eq!(c(1, 1), Some(0));
        assert_eq!(c(8, 8), Some(0));
        assert_eq!(c(9, 1), Some(1));
        assert_eq!(c(46, 1), Some(3));
        assert_eq!(c(256, 1), Some(5));
        assert_eq!(c(257, 1), None);
        assert_eq!(c(16, 16), None);
    }

    #[test]
    fn freed_blocks_are_reused() {
        let a = SmallBlocks::new();
        let l = Layout::from_size_align(40, 1).unwrap();
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            p.write_bytes(7, 40);
            a.dealloc(p, l);
            let q = a.alloc(Layout::from_size_align(60, 4).unwrap());
            assert_eq!(p, q, "same class, same block");
            let r = a.alloc(l);
            assert_ne!(q, r);
            a.dealloc(q, Layout::from_size_align(60, 4).unwrap());
            a.dealloc(r, l);
            let big = Layout::from_size_align(1000, 8).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null());
            a.dealloc(b, big);
        }
    }
}

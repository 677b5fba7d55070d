//! The C ABI called with arbitrary arguments: handle tokens that are valid,
//! freed, of the wrong type or made up; NULL or valid pointers; arbitrary text
//! (NUL-terminated, possibly invalid UTF-8); arbitrary lengths within buffers.
//! No call may crash, and every failure must be a status code.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ::mailq::ffi::*;
use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("mailq-fuzz-cabi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cdir = CString::new(dir.to_str().unwrap_or("/tmp/x")).unwrap_or_default();
    let mut opts = unsafe { std::mem::zeroed::<mailq_options>() };
    unsafe { mailq_options_init(&mut opts, std::mem::size_of::<mailq_options>()) };
    let mut q: *mut mailq = null_mut();
    if unsafe { mailq_open(cdir.as_ptr(), &opts, &mut q) } != mailq_status::MAILQ_OK {
        return;
    }
    // Handle pool: real ones, freed ones, and made-up tokens.
    let mut tokens: Vec<usize> = vec![0, 1, usize::MAX, 0x1_0000_0001, q as usize];
    let text = |d: &[u8]| -> CString {
        let v: Vec<u8> = d.iter().copied().filter(|&b| b != 0).take(300).collect();
        CString::new(v).unwrap_or_default()
    };
    let mut i = 0;
    while i + 4 <= data.len() {
        let (op, a, b, c) = (data[i], data[i + 1], data[i + 2], data[i + 3]);
        i += 4;
        let tok = tokens[a as usize % tokens.len()];
        let s = text(&data[i..(i + b as usize % 40).min(data.len())]);
        let sp: *const c_char = if c & 1 == 0 { s.as_ptr() } else { null() };
        let mut id = 0u64;
        let mut changed = 0usize;
        unsafe {
            match op % 16 {
                0 => {
                    let r = [sp, s.as_ptr(), sp];
                    let body = &data[i..];
                    mailq_enqueue(tok as *mut mailq, sp, r.as_ptr(), null(), (c % 4) as usize, null(), 0, body.as_ptr(), body.len().min(b as usize), &mut id);
                }
                1 => {
                    let mut s: *mut mailq_session = null_mut();
                    mailq_next_session(tok as *mut mailq, &mut s);
                    if !s.is_null() {
                        tokens.push(s as usize);
                    }
                }
                2 => {
                    let mut d: *mut mailq_delivery = null_mut();
                    mailq_session_next_delivery(tok as *mut mailq_session, &mut d);
                    if !d.is_null() {
                        tokens.push(d as usize);
                    }
                }
                3 => {
                    mailq_delivery_set_outcome(tok as *mut mailq_delivery, b as usize % 4, (c % 4) as i32, sp, a as u32);
                }
                4 => {
                    mailq_delivery_complete(tok as *mut mailq_delivery);
                }
                5 => mailq_delivery_free(tok as *mut mailq_delivery),
                6 => mailq_session_free(tok as *mut mailq_session),
                7 => {
                    mailq_session_site_failure(tok as *mut mailq_session, sp);
                }
                8 => {
                    let mut p: *const u8 = null();
                    let mut n = 0usize;
                    if mailq_delivery_body(tok as *const mailq_delivery, &mut p, &mut n) == mailq_status::MAILQ_OK && n > 0 {
                        std::hint::black_box(std::slice::from_raw_parts(p, n).iter().map(|&x| x as u64).sum::<u64>());
                    }
                    let _ = mailq_delivery_recipient(tok as *const mailq_delivery, b as usize);
                    let _ = mailq_delivery_sender(tok as *const mailq_delivery);
                }
                9 => {
                    mailq_hold(tok as *mut mailq, u64::from_le_bytes([a, b, c, 0, 0, 0, 0, 0]), &mut changed);
                    mailq_flush(tok as *mut mailq, if c & 2 == 0 { &mut changed } else { null_mut() });
                }
                10 => {
                    mailq_reroute(tok as *mut mailq, sp, s.as_ptr(), &mut changed);
                    mailq_suspend(tok as *mut mailq, sp);
                    mailq_resume(tok as *mut mailq, sp);
                }
                11 => {
                    let mut m: *mut mailq_message = null_mut();
                    mailq_message_begin(tok as *mut mailq, sp, &mut m);
                    if !m.is_null() {
                        tokens.push(m as usize);
                    }
                }
                12 => {
                    mailq_message_add_recipient(tok as *mut mailq_message, sp, null());
                    mailq_message_append(tok as *mut mailq_message, data[i..].as_ptr(), data.len().saturating_sub(i).min(b as usize));
                }
                13 => {
                    mailq_message_commit(tok as *mut mailq_message, if c & 2 == 0 { &mut id } else { null_mut() });
                }
                14 => {
                    let mut st = std::mem::zeroed::<mailq_stats>();
                    st.size = if c & 1 == 0 { std::mem::size_of::<mailq_stats>() as u32 } else { (b % 64) as u32 };
                    mailq_stats_get(tok as *mut mailq, &mut st);
                    let mut t: *mut c_char = null_mut();
                    if mailq_prometheus(tok as *mut mailq, &mut t, null_mut()) == mailq_status::MAILQ_OK {
                        mailq_string_free(t);
                    }
                }
                _ => {
                    let _ = mailq_strerror(a as i32 - 128);
                    let _ = mailq_last_error_message();
                    mailq_message_abort(tok as *mut mailq_message);
                    let mut w = 0u64;
                    mailq_next_wakeup(tok as *mut mailq, &mut w);
                    mailq_tick(tok as *mut mailq, null_mut());
                }
            }
        }
    }
    // Free whatever is left; then everything must refuse politely.
    for t in &tokens {
        mailq_delivery_free(*t as *mut mailq_delivery);
        mailq_session_free(*t as *mut mailq_session);
        mailq_message_abort(*t as *mut mailq_message);
    }
    assert_eq!(mailq_close(q), mailq_status::MAILQ_OK);
    assert_eq!(mailq_close(q), mailq_status::MAILQ_ERR_INVALID_HANDLE);
    let _ = std::fs::remove_dir_all(&dir);
});

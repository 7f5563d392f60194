use gclip::input::{decode, resample};
fn main() {
    let p = std::env::args().nth(1).unwrap();
    let w: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let h: usize = std::env::args().nth(3).unwrap().parse().unwrap();
    let b = std::fs::read(&p).unwrap();
    let d = decode::decode(&b, u64::MAX).ok().unwrap();
    if let decode::Samples::U8(v) = &d.samples {
        let out = resample::resize_u8(
            v,
            d.width,
            d.height,
            d.mode.channels(),
            w,
            h,
            resample::Filter::Bicubic,
        );
        std::fs::write("/tmp/rs_out.bin", out).unwrap();
    }
}

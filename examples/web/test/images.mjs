// The browser test's input images, drawn here and written as PNG (zlib from Node, no packages),
// so the page and the native CLI read the very same bytes.
import { deflateSync } from "node:zlib";

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, "ascii");
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

// 8-bit RGB PNG of `pixel(x, y) -> [r, g, b]`.
export function png(width, height, pixel) {
  const raw = Buffer.alloc(height * (1 + 3 * width));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y);
      raw.set([r, g, b], y * (1 + 3 * width) + 1 + 3 * x);
    }
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

// Three images with coherent regions (integer arithmetic only, so any machine draws the same).
export const IMAGES = {
  // Shapes on white: a red disc, a blue square.
  "shapes.png": png(64, 64, (x, y) => {
    if ((x - 22) ** 2 + (y - 24) ** 2 <= 18 * 18) return [220, 30, 40];
    if (x >= 40 && x < 58 && y >= 38 && y < 56) return [30, 60, 210];
    return [250, 250, 250];
  }),
  // Not square (the centre crop decides what is seen): stripes over a gradient.
  "stripes.png": png(96, 72, (x, y) => (((x + y) >> 3) % 3 === 0
    ? [40, 160, 60] : [(x * 2) & 255, (y * 3) & 255, 120])),
  // Large blocks in four colours with a noisy band: the ViT-B/16 geometry.
  "blocks.png": png(240, 240, (x, y) => {
    if (y > 100 && y < 140) return [(x * 37 + y * 11) % 256, (x * 13) % 256, (y * 29) % 256];
    const block = ((x / 80) | 0) + 3 * ((y / 80) | 0);
    return [[200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 60]][block % 4];
  }),
};

/* cloudfilm viewer: pixel data without the page. Multipart answers of WADO-RS /frames, native
 * pixels as typed arrays, the instance attributes the viewer uses from DICOM JSON /metadata,
 * and the grayscale display pipeline of PS3.3 C.11 (Modality LUT from Rescale Slope and
 * Intercept, VOI window, MONOCHROME1 and Presentation LUT Shape INVERSE), computed as the
 * server's rendering computes it so that both show the same image.
 */
window.CloudfilmPixels = (function () {
  'use strict';

  var TABLE_LIMIT = 1 << 20; // widest range of stored values windowed through one table

  // The body of the first part of a multipart/related answer (PS3.18 8.7.3.3.1; RFC 2046).
  function firstPart(buffer, contentType) {
    var bytes = new Uint8Array(buffer);
    var match = /boundary="?([^";]+)"?/i.exec(contentType);
    if (!/^multipart\//i.test(contentType) || !match) return bytes;
    var delimiter = ascii('--' + match[1]);
    var start = indexOf(bytes, delimiter, 0);
    if (start < 0) throw new Error('multipart answer without its boundary');
    var headersEnd = indexOf(bytes, ascii('\r\n\r\n'), start);
    if (headersEnd < 0) throw new Error('multipart part without headers');
    var head = new TextDecoder('latin1').decode(bytes.subarray(start, headersEnd));
    var length = /content-length:\s*(\d+)/i.exec(head);
    var bodyStart = headersEnd + 4;
    if (length) return bytes.subarray(bodyStart, bodyStart + parseInt(length[1], 10));
    var end = indexOf(bytes, ascii('\r\n--' + match[1]), bodyStart);
    return bytes.subarray(bodyStart, end < 0 ? bytes.length : end);
  }
  function ascii(text) {
    var out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i) & 0xff;
    return out;
  }
  function indexOf(bytes, pattern, from) {
    var first = pattern[0], last = bytes.length - pattern.length;
    outer: for (var i = from; i <= last; i++) {
      if (bytes[i] !== first) continue;
      for (var j = 1; j < pattern.length; j++) if (bytes[i + j] !== pattern[j]) continue outer;
      return i;
    }
    return -1;
  }

  // Native little-endian pixels as a typed array, masked to Bits Stored (PS3.5 8.1.1).
  function typedPixels(bytes, info) {
    var copy = bytes.slice().buffer; // aligned copy
    var Type = {
      '8u': Uint8Array, '8s': Int8Array, '16u': Uint16Array, '16s': Int16Array,
      '32u': Uint32Array, '32s': Int32Array,
    }[info.bitsAllocated + (info.signed ? 's' : 'u')];
    if (!Type) throw new Error('unsupported Bits Allocated ' + info.bitsAllocated);
    var pixels = new Type(copy, 0, Math.floor(copy.byteLength / Type.BYTES_PER_ELEMENT));
    var stored = info.bitsStored;
    if (stored && stored < info.bitsAllocated && info.bitsAllocated <= 16) {
      var shift = 32 - stored, mask = (1 << stored) - 1, out = new Int32Array(pixels.length);
      for (var i = 0; i < pixels.length; i++) {
        out[i] = info.signed ? ((pixels[i] << shift) >> shift) : (pixels[i] & mask);
      }
      return out;
    }
    return pixels;
  }

  // --------------------------------------------------------------------------- metadata

  function first(item, tag, fallback) {
    var element = item[tag];
    return element && element.Value && element.Value.length ? element.Value[0] : fallback;
  }
  function values(item, tag) {
    var element = item[tag];
    return element && element.Value ? element.Value : [];
  }
  function num(value, fallback) {
    var n = typeof value === 'number' ? value : parseFloat(value);
    return isFinite(n) ? n : fallback;
  }

  function parseMeta(item) {
    var photometric = String(first(item, '00280004', 'MONOCHROME2')).trim();
    var samples = num(first(item, '00280002', 1), 1);
    var centers = values(item, '00281050'), widths = values(item, '00281051');
    var explanations = values(item, '00281055');
    var windows = [];
    for (var k = 0; k < Math.min(centers.length, widths.length); k++) {
      var c = num(centers[k], NaN), w = num(widths[k], NaN);
      if (isFinite(c) && isFinite(w) && w > 0) windows.push({ c: c, w: w, name: explanations[k] || '' });
    }
    var fn = String(first(item, '00281056', 'LINEAR')).trim().toUpperCase().replace('-', '_');
    var spacing = values(item, '00280030'), calibration = 'patient';
    if (spacing.length < 2) { spacing = values(item, '00181164'); calibration = 'detector'; }
    if (spacing.length < 2) {
      spacing = []; calibration = 'none';
      var region = first(item, '00186011', null);
      if (region && num(first(region, '00186024', 0), 0) === 3) { // cm (PS3.3 C.8.5.5.1.15)
        var dx = num(first(region, '0018602C', 0), 0) * 10, dy = num(first(region, '0018602E', 0), 0) * 10;
        if (dx > 0 && dy > 0) { spacing = [dy, dx]; calibration = 'region'; }
      }
    }
    var frameTime = num(first(item, '00181063', 0), 0);
    var rate = frameTime > 0 ? 1000 / frameTime :
      num(first(item, '00180040', 0), 0) || num(first(item, '00082144', 0), 0);
    return {
      sop: first(item, '00080018', ''),
      rows: num(first(item, '00280010', 0), 0),
      columns: num(first(item, '00280011', 0), 0),
      bitsAllocated: num(first(item, '00280100', 16), 16),
      bitsStored: num(first(item, '00280101', 0), 0),
      signed: num(first(item, '00280103', 0), 0) === 1,
      slope: num(first(item, '00281053', 1), 1) || 1,
      intercept: num(first(item, '00281052', 0), 0),
      windows: windows,
      fn: fn === 'SIGMOID' || fn === 'LINEAR_EXACT' ? fn : 'LINEAR',
      inverse: photometric === 'MONOCHROME1' ||
        String(first(item, '20500020', '')).trim().toUpperCase() === 'INVERSE',
      windowable: samples === 1 && /^MONOCHROME/.test(photometric) && !item['00283010'] &&
        !item['00283000'] && !item['52009229'] && !item['52009230'],
      spacing: spacing.map(function (v) { return num(v, 0); }),
      calibration: calibration,
      rate: rate > 0 ? Math.min(rate, 60) : 0,
      modality: first(item, '00080060', ''),
    };
  }

  function ownWindow(info) {
    return info && info.windows && info.windows.length ?
      { c: info.windows[0].c, w: info.windows[0].w } : null;
  }

  // ---------------------------------------------------------------------- windowing

  // 8-bit display value of modality value x (PS3.3 C.11.2.1.2), as the server renders it.
  function voi(x, c, w, fn) {
    var y;
    if (fn === 'SIGMOID') return 255 / (1 + Math.exp(-4 * (x - c) / w));
    if (fn === 'LINEAR_EXACT') y = (x - c) / w + 0.5;
    else {
      w = Math.max(w, 1);
      if (w === 1) return x <= c - 0.5 ? 0 : 255;
      y = (x - (c - 0.5)) / (w - 1) + 0.5;
    }
    return Math.min(Math.max(y, 0), 1) * 255;
  }

  // Gray values (0-255) of one raw frame in the window: a table over its range of values.
  function windowRaw(raw, win, invert) {
    var info = raw.info, pixels = raw.pixels;
    if (!raw.range) {
      var lo = Infinity, hi = -Infinity;
      for (var i = 0; i < pixels.length; i++) {
        var v = pixels[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      raw.range = [lo, hi];
    }
    var low = raw.range[0], high = raw.range[1];
    var fn = win ? 'LINEAR' : info.fn; // a window chosen here is LINEAR, as /rendered?window=
    var own = win || ownWindow(info);
    var mlo = Math.min(low * info.slope, high * info.slope) + info.intercept;
    var mhi = Math.max(low * info.slope, high * info.slope) + info.intercept;
    var flip = info.inverse !== invert;
    var display = function (stored) {
      var x = stored * info.slope + info.intercept;
      var y = own ? voi(x, own.c, own.w, fn) : mhi > mlo ? (x - mlo) * 255 / (mhi - mlo) : 0;
      y = Math.round(y);
      return flip ? 255 - y : y;
    };
    var image = new ImageData(info.columns, info.rows);
    var out = image.data, p, q, g;
    if (high - low <= TABLE_LIMIT) { // one table over the frame's range of values
      var table = new Uint8ClampedArray(high - low + 1);
      for (var k = 0; k < table.length; k++) table[k] = display(low + k);
      for (p = 0, q = 0; p < pixels.length && q < out.length; p++, q += 4) {
        g = table[pixels[p] - low];
        out[q] = out[q + 1] = out[q + 2] = g;
        out[q + 3] = 255;
      }
    } else {
      for (p = 0, q = 0; p < pixels.length && q < out.length; p++, q += 4) {
        g = display(pixels[p]);
        out[q] = out[q + 1] = out[q + 2] = g;
        out[q + 3] = 255;
      }
    }
    return image;
  }

  // A display JPEG (rendered with the image's own window) re-windowed approximately: the
  // best that can be shown until the full-fidelity pixels arrive.
  function remapDisplay(image, info, win, invert) {
    var own = ownWindow(info);
    var table = new Uint8ClampedArray(256);
    for (var j = 0; j < 256; j++) {
      var y = j;
      if (win && own) {
        var v = info.inverse ? 255 - j : j; // the value before MONOCHROME1's inversion
        var x = own.c - 0.5 - (own.w - 1) / 2 + (v / 255) * (Math.max(own.w, 2) - 1);
        y = Math.round(voi(x, win.c, win.w, 'LINEAR'));
        if (info.inverse) y = 255 - y;
      }
      table[j] = invert ? 255 - y : y;
    }
    var data = image.data;
    for (var p = 0; p < data.length; p += 4) {
      data[p] = table[data[p]]; data[p + 1] = table[data[p + 1]]; data[p + 2] = table[data[p + 2]];
    }
    return image;
  }

  return {
    firstPart: firstPart, typedPixels: typedPixels, parseMeta: parseMeta, ownWindow: ownWindow,
    voi: voi, windowRaw: windowRaw, remapDisplay: remapDisplay,
  };
})();

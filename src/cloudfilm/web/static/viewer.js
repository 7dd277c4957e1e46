/* cloudfilm mobile viewer: a stack viewer over DICOMweb, no framework, no build step.
 *
 * Loading is progressive: the first image is the page's own preview (WADO-RS /rendered of the
 * middle slice, fetched with the page); the rest of the stack follows as /rendered JPEGs at the
 * native matrix (quality 90) in the background, nearest slices first; when the window leaves
 * the images' own (a preset or a drag), full-fidelity pixels (WADO-RS /frames, uncompressed)
 * are fetched for the slice in view and its neighbours, and windowed here with the Modality
 * LUT (Rescale Slope/Intercept from /metadata) and the VOI functions of PS3.3 C.11.2.1.2.
 *
 * Progress is readable from the page: #viewer's data-state ("loading", "complete", "partial"),
 * data-loaded and data-total, data-index, data-window and data-quality of the image drawn
 * ("display", "approximate", "full"), data-first-image and data-complete-ms (ms since the
 * navigation started), and the events cloudfilm:firstimage and cloudfilm:stackloaded (with
 * detail.ms). window.cloudfilmViewer.state() exposes the same and the view (window, zoom…).
 *
 * viewer-pixels.js (pixel data and windowing) and viewer-film.js (saving, film view) load
 * before this file.
 */
(function () {
  'use strict';

  var root = document.getElementById('viewer');
  var configNode = document.getElementById('viewer-config');
  if (!root || !configNode) return;
  var config = JSON.parse(configNode.textContent);
  var MSG = config.messages || {};
  var BASE = config.dicomweb;
  var DISPLAY_SLOTS = 4, RAW_SLOTS = 2, RAW_RADIUS = 2, RAW_KEEP = 24, BITMAP_KEEP = 24;
  var OCTET = 'multipart/related; type="application/octet-stream"';

  var stage = root.querySelector('.viewer-stage');
  var canvas = root.querySelector('.viewer-image');
  var marks = root.querySelector('.viewer-marks');
  var slider = root.querySelector('.viewer-slider');
  var preset = root.querySelector('.viewer-preset');
  var progressBar = root.querySelector('.viewer-progress span');
  var preview = root.querySelector('.viewer-preview');
  var ctx = canvas.getContext('2d');
  var mctx = marks.getContext('2d');
  var work = document.createElement('canvas');
  var wctx = work.getContext('2d', { willReadFrequently: true });

  function msg(key, values) {
    var text = MSG[key] || key;
    return text.replace(/\{(\w+)\}/g, function (all, name) {
      return values && name in values ? String(values[name]) : all;
    });
  }

  var P = window.CloudfilmPixels;
  var firstPart = P.firstPart, typedPixels = P.typedPixels, parseMeta = P.parseMeta;
  var ownWindow = P.ownWindow, windowRaw = P.windowRaw, remapDisplay = P.remapDisplay;

  function sinceStart() { return Math.round(performance.now()); }
  function ov(name, text) {
    var node = root.querySelector('[data-ov="' + name + '"]');
    if (node) node.textContent = text || '';
  }

  // ------------------------------------------------------------------ series and slices

  var S = null; // the series on screen; see openSeries
  var view = { zoom: 1, panX: 0, panY: 0, invert: false, window: null, tool: 'stack' };
  var generation = 0;

  function seriesUrl(study, series) {
    return BASE + '/studies/' + study.uid + '/series/' + series.uid;
  }

  function openSeries(study, series, withPreview) {
    generation += 1;
    if (S && S.abort) S.abort.abort();
    stopCine();
    var slices = [];
    series.instances.forEach(function (pair) {
      for (var f = 1; f <= pair[1]; f++) slices.push({ sop: pair[0], frame: f, frames: pair[1] });
    });
    S = {
      gen: generation, study: study, series: series, slices: slices, url: seriesUrl(study, series),
      index: 0, display: new Array(slices.length), failed: new Array(slices.length),
      loading: {}, rawLoading: {}, raw: new Map(), bitmaps: new Map(), meta: null,
      loaded: 0, marks: {}, abort: typeof AbortController === 'function' ? new AbortController() : null,
      multiframe: series.instances.length === 1 && slices.length > 1,
    };
    // the middle instance (its first frame), as the page's preview image shows it
    var middle = series.instances[Math.floor((series.instances.length - 1) / 2)];
    S.index = Math.max(0, slices.findIndex(function (s) { return s.sop === middle[0]; }));
    S.previewIndex = withPreview ? S.index : -1;
    view.window = null;
    setPresetOptions();
    slider.max = String(Math.max(slices.length, 1));
    slider.value = String(S.index + 1);
    root.dataset.state = 'loading';
    root.dataset.total = String(slices.length);
    root.dataset.loaded = '0';
    root.dataset.study = study.uid;
    root.dataset.series = series.uid;
    ov('patient', study.patient);
    ov('date', study.date);
    ov('institution', study.institution);
    ov('series', [series.number !== null ? 'Se ' + series.number : '', series.modality,
      series.description].join(' ').trim());
    updateOverlay();
    loadMetadata(S);
    pump();
  }

  function instanceUrl(s, slice) {
    return s.url + '/instances/' + slice.sop;
  }
  function displayUrl(s, slice) {
    var base = instanceUrl(s, slice);
    return (slice.frames > 1 ? base + '/frames/' + slice.frame : base) + '/rendered?quality=90';
  }

  // --------------------------------------------------------------------------- network

  function fetchOk(url, init, s) {
    init = init || {};
    if (s && s.abort) init.signal = s.abort.signal;
    init.credentials = 'same-origin';
    return fetch(url, init).then(function (response) {
      if (!response.ok) throw new Error(url + ': HTTP ' + response.status);
      return response;
    });
  }

  function withRetry(task, tries) {
    return task().catch(function (error) {
      if (tries <= 1 || (error && error.name === 'AbortError')) throw error;
      return new Promise(function (resolve) { setTimeout(resolve, 400); }).then(function () {
        return withRetry(task, tries - 1);
      });
    });
  }

  function loadMetadata(s) {
    withRetry(function () {
      return fetchOk(s.url + '/metadata', { headers: { Accept: 'application/dicom+json' } }, s)
        .then(function (r) { return r.json(); });
    }, 3).then(function (items) {
      if (s !== S) return;
      s.meta = {};
      items.forEach(function (item) {
        var info = parseMeta(item);
        s.meta[info.sop] = info;
      });
      setPresetOptions();
      updateOverlay();
      if (view.window) pumpRaw();
      draw();
    }).catch(function (error) {
      if (error && error.name !== 'AbortError') console.warn('metadata', error);
    });
  }

  // The next slices to fetch at display quality: nearest to the one in view first.
  function pump() {
    var s = S;
    if (!s) return;
    var active = Object.keys(s.loading).length;
    while (active < DISPLAY_SLOTS) {
      var next = nearestMissing(s);
      if (next < 0) break;
      loadDisplay(s, next);
      active += 1;
    }
    if (view.window) pumpRaw();
  }

  function nearestMissing(s) {
    var n = s.slices.length;
    for (var d = 0; d < n; d++) {
      var candidates = [s.index + d, s.index - d];
      for (var k = 0; k < 2; k++) {
        var i = candidates[k];
        if (i >= 0 && i < n && !s.display[i] && !s.failed[i] && !s.loading[i] &&
            i !== s.previewIndex) return i;
      }
    }
    return -1;
  }

  function loadDisplay(s, i) {
    s.loading[i] = true;
    withRetry(function () {
      return fetchOk(displayUrl(s, s.slices[i]), {}, s).then(function (r) { return r.blob(); });
    }, 3).then(function (blob) {
      delete s.loading[i];
      if (s !== S) return;
      s.display[i] = blob;
      countLoaded(s);
      if (i === s.index) draw();
      pump();
    }).catch(function (error) {
      delete s.loading[i];
      if (s !== S || (error && error.name === 'AbortError')) return;
      s.failed[i] = true;
      note(msg('error.image'));
      countLoaded(s);
      pump();
    });
  }

  function countLoaded(s) {
    var loaded = 0, failed = 0;
    for (var i = 0; i < s.slices.length; i++) {
      if (s.display[i]) loaded += 1; else if (s.failed[i]) failed += 1;
    }
    s.loaded = loaded;
    root.dataset.loaded = String(loaded);
    progressBar.style.width = (100 * loaded / Math.max(s.slices.length, 1)).toFixed(1) + '%';
    if (loaded + failed === s.slices.length && root.dataset.state === 'loading') {
      root.dataset.state = failed ? 'partial' : 'complete';
      root.dataset.completeMs = String(sinceStart());
      root.dispatchEvent(new CustomEvent('cloudfilm:stackloaded', {
        bubbles: true, detail: { ms: sinceStart(), loaded: loaded, failed: failed },
      }));
    }
    updateOverlay();
  }

  // ------------------------------------------------------------ full-fidelity pixels

  function pumpRaw() {
    var s = S;
    if (!s || !s.meta || !view.window) return;
    var active = Object.keys(s.rawLoading).length;
    for (var d = 0; d <= RAW_RADIUS && active < RAW_SLOTS; d++) {
      var candidates = d ? [s.index + d, s.index - d] : [s.index];
      for (var k = 0; k < candidates.length && active < RAW_SLOTS; k++) {
        var i = candidates[k];
        if (i < 0 || i >= s.slices.length || s.raw.has(i) || s.rawLoading[i]) continue;
        var info = s.meta[s.slices[i].sop];
        if (!info || !info.windowable) continue;
        loadRaw(s, i, info);
        active += 1;
      }
    }
  }

  function loadRaw(s, i, info) {
    var slice = s.slices[i];
    s.rawLoading[i] = true;
    if (i === s.index) note(msg('full_quality'));
    withRetry(function () {
      return fetchOk(instanceUrl(s, slice) + '/frames/' + slice.frame, { headers: { Accept: OCTET } }, s)
        .then(function (r) {
          var type = r.headers.get('Content-Type') || '';
          return r.arrayBuffer().then(function (buf) { return firstPart(buf, type); });
        });
    }, 2).then(function (bytes) {
      delete s.rawLoading[i];
      if (s !== S) return;
      s.raw.set(i, { pixels: typedPixels(bytes, info), info: info, lut: null });
      while (s.raw.size > RAW_KEEP) s.raw.delete(farthest(s.raw, s.index));
      if (i === s.index) { note(''); draw(); }
      pumpRaw();
    }).catch(function (error) {
      delete s.rawLoading[i];
      if (error && error.name !== 'AbortError') console.warn('frame', error);
    });
  }

  function farthest(map, index) {
    var worst = null, distance = -1;
    map.forEach(function (value, key) {
      if (Math.abs(key - index) > distance) { distance = Math.abs(key - index); worst = key; }
    });
    return worst;
  }

  function currentInfo() {
    return S && S.meta ? S.meta[S.slices[S.index].sop] || null : null;
  }

  // ---------------------------------------------------------------------------- drawing

  var frameRequested = false;
  var shown = { quality: 'none', index: -1, width: 0, height: 0 };

  function draw() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(function () { frameRequested = false; paint(); });
  }

  function bitmapFor(s, i) {
    var cached = s.bitmaps.get(i);
    if (cached && cached !== 'pending') {
      s.bitmaps.delete(i); s.bitmaps.set(i, cached); // most recently used
      return cached;
    }
    if (!cached && s.display[i]) decode(s, i);
    return null;
  }

  function decode(s, i) {
    s.bitmaps.set(i, 'pending');
    var blob = s.display[i];
    var done = function (bitmap) {
      if (s !== S) return;
      s.bitmaps.set(i, bitmap);
      while (s.bitmaps.size > BITMAP_KEEP) {
        var key = farthest(s.bitmaps, s.index);
        var old = s.bitmaps.get(key);
        if (old && old.close) old.close();
        s.bitmaps.delete(key);
      }
      if (i === s.index) draw();
    };
    var failed = function () { s.bitmaps.delete(i); };
    if (window.createImageBitmap) createImageBitmap(blob).then(done, failed);
    else if (!(blob instanceof Blob)) done(blob); // the preview <img>
    else {
      var img = new Image();
      var url = URL.createObjectURL(blob);
      img.onload = function () { URL.revokeObjectURL(url); done(img); };
      img.onerror = function () { URL.revokeObjectURL(url); failed(); };
      img.src = url;
    }
  }

  function prefetchBitmaps(s) {
    for (var d = 1; d <= 3; d++) {
      [s.index + d, s.index - d].forEach(function (i) {
        if (i >= 0 && i < s.slices.length && !s.bitmaps.has(i) && s.display[i]) decode(s, i);
      });
    }
  }

  function fitCanvas() {
    var ratio = window.devicePixelRatio || 1;
    var width = Math.max(1, Math.round(stage.clientWidth * ratio));
    var height = Math.max(1, Math.round(stage.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = marks.width = width;
      canvas.height = marks.height = height;
    }
  }

  // Where the image lies on the canvas (canvas pixels) for an image of w × h pixels.
  function placement(w, h) {
    var scale = Math.min(canvas.width / w, canvas.height / h) * view.zoom;
    var ratio = window.devicePixelRatio || 1;
    return {
      x: (canvas.width - w * scale) / 2 + view.panX * ratio,
      y: (canvas.height - h * scale) / 2 + view.panY * ratio,
      w: w * scale, h: h * scale, scale: scale,
    };
  }

  function paint() {
    var s = S;
    if (!s) return;
    fitCanvas();
    var i = s.index, info = currentInfo(), source = null, quality = 'display';
    var raw = view.window ? s.raw.get(i) : null;
    if (raw) {
      var key = [view.window.c, view.window.w, view.invert].join();
      if (raw.key !== key) { raw.image = windowRaw(raw, view.window, view.invert); raw.key = key; }
      putWork(raw.image);
      source = work; quality = 'full';
    } else {
      var usePreview = i === s.previewIndex && preview.complete && preview.naturalWidth;
      var bitmap = bitmapFor(s, i) || (usePreview ? preview : null);
      if (bitmap) {
        if (view.invert || view.window) {
          if (view.window && !info) return; // window known only with the metadata
          work.width = bitmap.naturalWidth || bitmap.width;
          work.height = bitmap.naturalHeight || bitmap.height;
          wctx.drawImage(bitmap, 0, 0);
          var data = wctx.getImageData(0, 0, work.width, work.height);
          wctx.putImageData(remapDisplay(data, info || {}, view.window, view.invert), 0, 0);
          source = work;
          quality = view.window ? 'approximate' : 'display';
        } else source = bitmap;
      }
    }
    prefetchBitmaps(s);
    if (!source) { updateOverlay(); return; } // keep the previous image until this one is ready
    var w = source.naturalWidth || source.width, h = source.naturalHeight || source.height;
    var at = placement(w, h);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(source, at.x, at.y, at.w, at.h);
    shown = { quality: quality, index: i, width: w, height: h, rect: at };
    root.dataset.quality = quality;
    root.dataset.index = String(i);
    root.dataset.window = view.window ? view.window.c + ',' + view.window.w : 'auto';
    drawMarks();
    updateOverlay();
    if (!root.dataset.firstImage) {
      root.dataset.firstImage = String(sinceStart());
      root.dispatchEvent(new CustomEvent('cloudfilm:firstimage', {
        bubbles: true, detail: { ms: sinceStart() },
      }));
    }
  }

  function putWork(image) {
    if (work.width !== image.width || work.height !== image.height) {
      work.width = image.width; work.height = image.height;
    }
    wctx.putImageData(image, 0, 0);
  }

  // ----------------------------------------------------------------------- overlay text

  function currentWindowText() {
    var win = view.window || ownWindow(currentInfo());
    return win ? msg('window', { w: Math.round(win.w), c: Math.round(win.c) }) : '';
  }

  function updateOverlay() {
    var s = S;
    if (!s) return;
    var total = s.slices.length;
    ov('slice', msg(s.multiframe ? 'frame' : 'slice', { n: s.index + 1, total: total }));
    ov('window', currentWindowText());
    ov('zoom', msg('zoom', { z: Math.round(view.zoom * 100) }));
    ov('quality', s.loaded < total ? msg('loading', { loaded: s.loaded, total: total }) :
      msg('loaded', { total: total }));
  }

  var noteTimer = null;
  function note(text) {
    var node = root.querySelector('[data-ov="note"]');
    node.textContent = text;
    node.hidden = !text;
    clearTimeout(noteTimer);
    if (text) noteTimer = setTimeout(function () { node.hidden = true; }, 4000);
  }

  // -------------------------------------------------------------------------- actions

  function goTo(index) {
    var s = S;
    if (!s) return;
    index = Math.max(0, Math.min(s.slices.length - 1, Math.round(index)));
    if (index === s.index) return;
    s.index = index;
    slider.value = String(index + 1);
    pump();
    draw();
  }

  function setWindow(win) {
    view.window = win ? { c: win.c, w: Math.max(1, win.w) } : null;
    if (!win) preset.value = 'auto';
    pumpRaw();
    draw();
  }

  function setPresetOptions() {
    var info = currentInfo();
    var ct = S && S.series.modality === 'CT';
    Array.prototype.forEach.call(preset.options, function (option) {
      if (option.dataset.ct) { option.hidden = !ct; option.disabled = !ct; }
    });
    Array.prototype.slice.call(preset.querySelectorAll('option[data-own]')).forEach(function (o) {
      o.remove();
    });
    if (info) {
      info.windows.forEach(function (win, k) {
        var option = document.createElement('option');
        option.value = win.c + ',' + win.w;
        option.dataset.own = String(k);
        option.textContent = (win.name || 'W/L') + ' ' + Math.round(win.w) + '/' + Math.round(win.c);
        preset.appendChild(option);
      });
    }
    if (!view.window) preset.value = 'auto';
  }

  function resetView() {
    view.zoom = 1; view.panX = 0; view.panY = 0; view.invert = false;
    if (S) S.marks = {};
    pressed('[data-action="invert"]', false);
    setWindow(null);
  }

  function pressed(selector, on) {
    var node = root.querySelector(selector);
    if (node) node.setAttribute('aria-pressed', on ? 'true' : 'false');
  }

  function setTool(tool) {
    view.tool = tool;
    Array.prototype.forEach.call(root.querySelectorAll('[data-tool]'), function (b) {
      b.setAttribute('aria-pressed', b.dataset.tool === tool ? 'true' : 'false');
    });
    root.dataset.tool = tool;
  }

  function zoomAt(factor, cx, cy) {
    var zoom = Math.max(0.25, Math.min(16, view.zoom * factor));
    factor = zoom / view.zoom;
    // keep the point under (cx, cy) (CSS pixels from the stage centre) in place
    view.panX = cx - (cx - view.panX) * factor;
    view.panY = cy - (cy - view.panY) * factor;
    view.zoom = zoom;
    draw();
  }

  // cine: multi-frame at its own rate, stacks at 10 images per second
  var cineTimer = null;
  function toggleCine() {
    if (cineTimer) { stopCine(); return; }
    var s = S, info = currentInfo();
    if (!s || s.slices.length < 2) return;
    var rate = (info && info.rate) || 10;
    pressed('[data-action="cine"]', true);
    cineTimer = setInterval(function () {
      var next = (s.index + 1) % s.slices.length;
      if (!s.display[next]) return; // wait for it
      s.index = next;
      slider.value = String(next + 1);
      pump();
      draw();
    }, 1000 / rate);
  }
  function stopCine() {
    if (cineTimer) clearInterval(cineTimer);
    cineTimer = null;
    pressed('[data-action="cine"]', false);
  }

  function toggleFullscreen() {
    var on = !root.classList.contains('viewer-max');
    root.classList.toggle('viewer-max', on);
    document.body.classList.toggle('viewer-max-body', on);
    var request = root.requestFullscreen || root.webkitRequestFullscreen;
    var exit = document.exitFullscreen || document.webkitExitFullscreen;
    var active = document.fullscreenElement || document.webkitFullscreenElement;
    try {
      if (on && request && !active) {
        var p = request.call(root);
        if (p && p.catch) p.catch(function () {});
      } else if (!on && exit && active) exit.call(document);
    } catch (e) { /* the CSS full-window mode stays */ }
    draw();
  }

  // ---------------------------------------------------------------------- measurement

  function toImage(px, py) {
    var at = shown.rect;
    if (!at) return null;
    var ratio = window.devicePixelRatio || 1;
    return { x: (px * ratio - at.x) / at.scale, y: (py * ratio - at.y) / at.scale };
  }

  function lengthText(line) {
    var info = currentInfo();
    var dx = line.b.x - line.a.x, dy = line.b.y - line.a.y;
    if (info && info.spacing.length === 2 && info.spacing[0] > 0 && info.spacing[1] > 0) {
      var mm = Math.sqrt(Math.pow(dx * info.spacing[1], 2) + Math.pow(dy * info.spacing[0], 2));
      var where = info.calibration === 'detector' ? ' (' + msg('calibrated_detector') + ')' : '';
      return mm.toFixed(1) + ' mm' + where;
    }
    return Math.sqrt(dx * dx + dy * dy).toFixed(0) + ' px (' + msg('not_calibrated') + ')';
  }

  function drawMarks() {
    mctx.setTransform(1, 0, 0, 1, 0, 0);
    mctx.clearRect(0, 0, marks.width, marks.height);
    var s = S, at = shown.rect;
    if (!s || !at) return;
    var lines = (s.marks[s.index] || []).concat(dragLine ? [dragLine] : []);
    var ratio = window.devicePixelRatio || 1;
    mctx.lineWidth = 2 * ratio;
    mctx.font = Math.round(13 * ratio) + 'px sans-serif';
    lines.forEach(function (line) {
      var ax = at.x + line.a.x * at.scale, ay = at.y + line.a.y * at.scale;
      var bx = at.x + line.b.x * at.scale, by = at.y + line.b.y * at.scale;
      mctx.strokeStyle = '#ffd400';
      mctx.beginPath(); mctx.moveTo(ax, ay); mctx.lineTo(bx, by); mctx.stroke();
      var text = lengthText(line);
      mctx.fillStyle = '#000';
      mctx.fillText(text, bx + 7 * ratio, by + 1 * ratio);
      mctx.fillStyle = '#ffd400';
      mctx.fillText(text, bx + 6 * ratio, by);
    });
    root.dataset.measure = lines.length ? lengthText(lines[lines.length - 1]) : '';
  }

  // ------------------------------------------------------------------ pointer gestures

  var pointers = new Map();
  var gesture = null, dragLine = null;

  function stagePoint(e) {
    var box = stage.getBoundingClientRect();
    return { x: e.clientX - box.left, y: e.clientY - box.top, w: box.width, h: box.height };
  }

  stage.addEventListener('pointerdown', function (e) {
    if (e.pointerType === 'mouse' && e.button > 2) return;
    try { stage.setPointerCapture(e.pointerId); } catch (err) { /* not capturable */ }
    root.focus({ preventScroll: true });
    pointers.set(e.pointerId, stagePoint(e));
    stopCine();
    e.preventDefault();
    if (pointers.size === 2) { gesture = pinchStart(); dragLine = null; return; }
    var p = stagePoint(e);
    var tool = e.button === 2 ? 'window' : e.button === 1 || e.shiftKey ? 'pan' : view.tool;
    if (tool === 'zoom') tool = 'pan';
    var info = currentInfo();
    if (tool === 'window' && info && !info.windowable) tool = 'none'; // colour: no window
    gesture = { tool: tool, x: p.x, y: p.y, index: S ? S.index : 0, moved: 0,
      window: view.window || ownWindow(currentInfo()), panX: view.panX, panY: view.panY };
    if (tool === 'measure') {
      var a = toImage(p.x, p.y);
      if (a) dragLine = { a: a, b: a };
    }
  });

  stage.addEventListener('pointermove', function (e) {
    if (!pointers.has(e.pointerId) || !gesture) return;
    pointers.set(e.pointerId, stagePoint(e));
    if (gesture.pinch) { pinchMove(); return; }
    var p = stagePoint(e), dx = p.x - gesture.x, dy = p.y - gesture.y;
    gesture.moved = Math.max(gesture.moved, Math.abs(dx) + Math.abs(dy));
    if (gesture.tool === 'stack' && S) {
      var step = Math.max(3, Math.min(12, p.h / Math.max(S.slices.length, 1)));
      goTo(gesture.index + Math.round(dy / step));
    } else if (gesture.tool === 'window' && gesture.window) {
      var scale = Math.max(gesture.window.w, 10) / 200;
      setWindow({ c: gesture.window.c - dy * scale, w: Math.max(1, gesture.window.w + dx * scale) });
      preset.value = '';
    } else if (gesture.tool === 'pan') {
      view.panX = gesture.panX + dx; view.panY = gesture.panY + dy; draw();
    } else if (gesture.tool === 'measure' && dragLine) {
      var b = toImage(p.x, p.y);
      if (b) { dragLine.b = b; drawMarks(); }
    }
  });

  function endPointer(e) {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    if (gesture && gesture.tool === 'measure' && dragLine && S) {
      var dx = dragLine.b.x - dragLine.a.x, dy = dragLine.b.y - dragLine.a.y;
      if (Math.sqrt(dx * dx + dy * dy) > 2) (S.marks[S.index] = S.marks[S.index] || []).push(dragLine);
      dragLine = null;
      drawMarks();
    }
    gesture = null;
  }
  stage.addEventListener('pointerup', endPointer);
  stage.addEventListener('pointercancel', endPointer);
  stage.addEventListener('contextmenu', function (e) { e.preventDefault(); });

  function pinchPoints() {
    var list = Array.from(pointers.values());
    return { a: list[0], b: list[1] };
  }
  function pinchStart() {
    var pts = pinchPoints();
    return {
      pinch: true, zoom: view.zoom, panX: view.panX, panY: view.panY,
      dist: Math.max(10, Math.hypot(pts.a.x - pts.b.x, pts.a.y - pts.b.y)),
      cx: (pts.a.x + pts.b.x) / 2, cy: (pts.a.y + pts.b.y) / 2,
    };
  }
  function pinchMove() {
    var pts = pinchPoints(), g = gesture;
    var dist = Math.max(10, Math.hypot(pts.a.x - pts.b.x, pts.a.y - pts.b.y));
    var cx = (pts.a.x + pts.b.x) / 2, cy = (pts.a.y + pts.b.y) / 2;
    var zoom = Math.max(0.25, Math.min(16, g.zoom * dist / g.dist));
    var f = zoom / g.zoom, ox = g.cx - pts.a.w / 2, oy = g.cy - pts.a.h / 2;
    view.zoom = zoom;
    view.panX = ox - (ox - g.panX) * f + (cx - g.cx);
    view.panY = oy - (oy - g.panY) * f + (cy - g.cy);
    draw();
  }

  stage.addEventListener('wheel', function (e) {
    e.preventDefault();
    stopCine();
    var p = stagePoint(e);
    if (e.ctrlKey || e.metaKey || view.tool === 'zoom') {
      zoomAt(Math.exp(-e.deltaY / 300), p.x - p.w / 2, p.y - p.h / 2);
    } else if (S) {
      wheelRest += e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
      var steps = Math.trunc(wheelRest / 50);
      if (steps) { wheelRest -= steps * 50; goTo(S.index + steps); }
    }
  }, { passive: false });
  var wheelRest = 0;

  slider.addEventListener('input', function () { stopCine(); goTo(parseInt(slider.value, 10) - 1); });

  preset.addEventListener('change', function () {
    if (preset.value === 'auto' || !preset.value) { setWindow(null); return; }
    var parts = preset.value.split(',').map(Number);
    setWindow({ c: parts[0], w: parts[1] });
  });

  root.addEventListener('keydown', function (e) {
    var tag = e.target && e.target.tagName;
    if (/^(INPUT|SELECT|TEXTAREA)$/.test(tag)) return;
    if (tag === 'BUTTON' && (e.key === ' ' || e.key === 'Enter')) return;
    var s = S, handled = true;
    if (!s) return;
    switch (e.key) {
      case 'ArrowUp': case 'ArrowLeft': case 'PageUp': goTo(s.index - (e.key === 'PageUp' ? 10 : 1)); break;
      case 'ArrowDown': case 'ArrowRight': case 'PageDown': goTo(s.index + (e.key === 'PageDown' ? 10 : 1)); break;
      case 'Home': goTo(0); break;
      case 'End': goTo(s.slices.length - 1); break;
      case '+': case '=': zoomAt(1.25, 0, 0); break;
      case '-': zoomAt(0.8, 0, 0); break;
      case 'r': case 'R': case '0': resetView(); break;
      case 'i': case 'I': toggleInvert(); break;
      case 'f': case 'F': toggleFullscreen(); break;
      case ' ': toggleCine(); break;
      case 'Escape': if (root.classList.contains('viewer-max')) toggleFullscreen(); break;
      default:
        if (/^[1-9]$/.test(e.key)) choosePreset(parseInt(e.key, 10)); else handled = false;
    }
    if (handled) e.preventDefault();
  });

  function choosePreset(n) {
    var usable = Array.prototype.filter.call(preset.options, function (o) { return !o.disabled; });
    if (n < usable.length) { preset.value = usable[n].value; preset.dispatchEvent(new Event('change')); }
  }

  function toggleInvert() {
    view.invert = !view.invert;
    pressed('[data-action="invert"]', view.invert);
    draw();
  }

  root.querySelector('.viewer-bar').addEventListener('click', function (e) {
    var button = e.target.closest('button');
    if (!button) return;
    if (button.dataset.tool) { setTool(button.dataset.tool); return; }
    var action = button.dataset.action;
    if (action === 'invert') toggleInvert();
    else if (action === 'reset') resetView();
    else if (action === 'cine') toggleCine();
    else if (action === 'fullscreen') toggleFullscreen();
    else if (action === 'save') film.save();
    else if (action === 'film') film.open();
  });

  document.addEventListener('fullscreenchange', function () {
    if (!document.fullscreenElement && root.classList.contains('viewer-max')) {
      root.classList.remove('viewer-max');
      document.body.classList.remove('viewer-max-body');
    }
    draw();
  });
  window.addEventListener('resize', draw);

  // ------------------------------------------------------------------------ start-up

  var film = window.CloudfilmFilm({
    root: root, canvas: canvas, marks: marks, msg: msg, note: note, view: view,
    series: function () { return S; }, shown: function () { return shown; },
    displayUrl: displayUrl, fetchOk: fetchOk, currentInfo: currentInfo,
    currentWindowText: currentWindowText, stopCine: stopCine,
  });

  Array.prototype.forEach.call(document.querySelectorAll('.thumb'), function (button) {
    button.addEventListener('click', function () {
      var study = config.studies.find(function (st) { return st.uid === button.dataset.study; });
      var series = study && study.series.find(function (se) { return se.uid === button.dataset.series; });
      if (!series) return;
      resetView();
      openSeries(study, series);
      root.scrollIntoView({ behavior: 'smooth', block: 'start' });
    });
  });

  var firstStudy = config.studies.find(function (st) { return st.series.length; });
  if (!firstStudy) return;
  openSeries(firstStudy, firstStudy.series[0], true);
  // The preview <img> (fetched with the page) is the first slice loaded: no second download.
  var previewReady = function () {
    var s = S;
    if (!s || s.previewIndex < 0 || s.display[s.previewIndex]) return;
    s.display[s.previewIndex] = preview;
    countLoaded(s);
    if (s.index === s.previewIndex) draw();
    pump();
  };
  var previewFailed = function () {
    if (S && S.previewIndex >= 0) { S.previewIndex = -1; pump(); }
  };
  if (preview.complete) { if (preview.naturalWidth) previewReady(); else previewFailed(); }
  else {
    preview.addEventListener('load', previewReady);
    preview.addEventListener('error', previewFailed);
  }
  setTool('stack');

  window.cloudfilmViewer = {
    state: function () {
      return {
        index: S ? S.index : -1, total: S ? S.slices.length : 0, loaded: S ? S.loaded : 0,
        quality: shown.quality, shownIndex: shown.index, rect: shown.rect || null,
        window: view.window || ownWindow(currentInfo()), zoom: view.zoom, invert: view.invert,
        metadata: !!(S && S.meta), state: root.dataset.state, tool: view.tool,
        imageWidth: shown.width, imageHeight: shown.height,
      };
    },
    goTo: goTo,
    setWindow: setWindow,
    reset: resetView,
  };
})();

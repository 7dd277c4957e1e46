/* cloudfilm viewer: saving the view as an image, and the film view (the series laid out as
 * an n×m sheet, as printed film would be), which can be saved too. Saving uses canvas.toBlob
 * and a download link; WeChat's in-app browser ignores downloads, so there (and wherever
 * downloads are not supported) the image is shown with a plain link to press and hold.
 *
 * CloudfilmFilm(api) is called by viewer.js with what it needs of the viewer's state.
 */
window.CloudfilmFilm = function (api) {
  'use strict';

  var root = api.root, canvas = api.canvas, marks = api.marks, msg = api.msg, note = api.note;
  var view = api.view;
  var WECHAT = /MicroMessenger/i.test(navigator.userAgent);

  // ----------------------------------------------------------------------- save image

  function composeView() {
    var out = document.createElement('canvas');
    out.width = canvas.width; out.height = canvas.height;
    var o = out.getContext('2d');
    o.drawImage(canvas, 0, 0);
    o.drawImage(marks, 0, 0);
    var ratio = window.devicePixelRatio || 1, size = Math.round(13 * ratio);
    o.font = size + 'px sans-serif';
    o.fillStyle = '#fff';
    var corners = { tl: ['patient', 'date'], tr: ['institution'], bl: ['series', 'slice'], br: ['window', 'zoom'] };
    Object.keys(corners).forEach(function (corner) {
      var texts = corners[corner].map(function (name) {
        return root.querySelector('[data-ov="' + name + '"]').textContent;
      }).filter(Boolean);
      texts.forEach(function (text, k) {
        var right = corner[1] === 'r', bottom = corner[0] === 'b';
        o.textAlign = right ? 'right' : 'left';
        var x = right ? out.width - 6 * ratio : 6 * ratio;
        var y = bottom ? out.height - (texts.length - k - 0.3) * (size + 4) : (k + 1) * (size + 4);
        o.fillText(text, x, y);
      });
    });
    return out;
  }

  function offer(canvasToSave, name, type) {
    var show = function (href) {
      var box = document.querySelector('.saved');
      box.querySelector('.saved-image').src = href;
      var link = box.querySelector('.saved-link');
      link.href = href;
      link.setAttribute('download', name);
      box.hidden = false;
      root.dataset.saved = name;
    };
    if (WECHAT || !canvasToSave.toBlob) { show(canvasToSave.toDataURL(type, 0.92)); return; }
    canvasToSave.toBlob(function (blob) {
      if (!blob) { show(canvasToSave.toDataURL(type, 0.92)); return; }
      var url = URL.createObjectURL(blob);
      var a = document.createElement('a');
      if (!('download' in a)) { show(canvasToSave.toDataURL(type, 0.92)); return; }
      a.href = url; a.download = name;
      document.body.appendChild(a);
      a.click();
      a.remove();
      root.dataset.saved = name;
      setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
    }, type, 0.92);
  }

  function fileStem() {
    var s = api.series();
    return 'cloudfilm-' + (s ? (s.study.date || 'study') + '-' + (s.index + 1) : 'image');
  }

  function saveView() {
    if (!api.shown().rect) return;
    offer(composeView(), fileStem() + '.png', 'image/png');
  }

  document.querySelector('.saved-close').addEventListener('click', function () {
    document.querySelector('.saved').hidden = true;
  });

  // ------------------------------------------------------------------------ film view

  var film = document.querySelector('.film');
  var sheet = film.querySelector('.film-sheet');
  var filmPage = 0, filmToken = 0;

  function layoutFor(count) {
    var choice = film.querySelector('.film-layout').value;
    if (choice !== 'auto') {
      var parts = choice.split('x').map(Number);
      return { cols: parts[0], rows: parts[1] };
    }
    var options = [[1, 1], [2, 1], [2, 2], [3, 3], [3, 4], [4, 5], [5, 6]];
    for (var k = 0; k < options.length; k++) {
      if (options[k][0] * options[k][1] >= count) return { cols: options[k][0], rows: options[k][1] };
    }
    return { cols: 5, rows: 6 };
  }

  function openFilm() {
    var s = api.series();
    if (!s) return;
    api.stopCine();
    film.hidden = false;
    var layout = layoutFor(s.slices.length);
    filmPage = Math.floor(s.index / (layout.cols * layout.rows));
    drawFilm();
  }

  function filmImage(s, i, cellW, cellH) {
    var plain = !view.window && s.display[i];
    if (plain) {
      var held = s.display[i];
      if (window.createImageBitmap) return createImageBitmap(held);
      return held instanceof Blob ? blobImage(held) : Promise.resolve(held);
    }
    var url = api.displayUrl(s, s.slices[i]).replace('quality=90', 'quality=90&viewport=' +
      Math.round(cellW) + ',' + Math.round(cellH) +
      (view.window ? '&window=' + view.window.c.toFixed(1) + ',' + view.window.w.toFixed(1) : ''));
    return api.fetchOk(url, {}, s).then(function (r) { return r.blob(); }).then(function (blob) {
      return window.createImageBitmap ? createImageBitmap(blob) : blobImage(blob);
    });
  }

  function blobImage(blob) {
    return new Promise(function (resolve, reject) {
      var img = new Image(), url = URL.createObjectURL(blob);
      img.onload = function () { URL.revokeObjectURL(url); resolve(img); };
      img.onerror = function () { URL.revokeObjectURL(url); reject(new Error('image')); };
      img.src = url;
    });
  }

  function drawFilm() {
    var s = api.series(), token = ++filmToken;
    var layout = layoutFor(s.slices.length), cells = layout.cols * layout.rows;
    var pages = Math.max(1, Math.ceil(s.slices.length / cells));
    filmPage = Math.max(0, Math.min(pages - 1, filmPage));
    var info = api.currentInfo() || {};
    var aspect = info.rows && info.columns ? info.rows / info.columns : 1;
    var width = 1600, cellW = width / layout.cols, cellH = cellW * aspect, header = 64;
    sheet.width = width;
    sheet.height = Math.round(header + cellH * layout.rows);
    var f = sheet.getContext('2d');
    f.fillStyle = '#000';
    f.fillRect(0, 0, sheet.width, sheet.height);
    f.fillStyle = '#fff';
    f.font = '24px sans-serif';
    f.textAlign = 'left';
    f.fillText([s.study.patient, s.study.date, s.study.institution].filter(Boolean).join('   '), 16, 28);
    f.font = '18px sans-serif';
    var series = [s.series.modality, s.series.description].join(' ').trim();
    f.fillText(series + '   ' + api.currentWindowText(), 16, 54);
    f.textAlign = 'right';
    f.fillText(msg('film_page', { n: filmPage + 1, total: pages }), width - 16, 54);
    film.querySelector('.film-page').textContent = msg('film_page', { n: filmPage + 1, total: pages });
    film.dataset.state = 'drawing';
    var jobs = [];
    for (var k = 0; k < cells; k++) {
      var i = filmPage * cells + k;
      if (i >= s.slices.length) break;
      jobs.push(drawCell(f, s, i, k, layout, cellW, cellH, header, token));
    }
    Promise.all(jobs).then(function () {
      if (token === filmToken) film.dataset.state = 'ready';
    }, function () {
      if (token === filmToken) { film.dataset.state = 'partial'; note(msg('error.image')); }
    });
  }

  function drawCell(f, s, i, k, layout, cellW, cellH, header, token) {
    var x = (k % layout.cols) * cellW, y = header + Math.floor(k / layout.cols) * cellH;
    return filmImage(s, i, cellW, cellH).then(function (image) {
      if (token !== filmToken) return;
      var w = image.width, h = image.height, scale = Math.min(cellW / w, cellH / h);
      var dx = x + (cellW - w * scale) / 2, dy = y + (cellH - h * scale) / 2;
      f.drawImage(image, dx, dy, w * scale, h * scale);
      if (view.invert) {
        f.save();
        f.globalCompositeOperation = 'difference';
        f.fillStyle = '#fff';
        f.fillRect(dx, dy, w * scale, h * scale);
        f.restore();
      }
      f.strokeStyle = '#333';
      f.strokeRect(x + 0.5, y + 0.5, cellW - 1, cellH - 1);
      f.fillStyle = '#fff';
      f.font = '16px sans-serif';
      f.textAlign = 'left';
      f.fillText(String(i + 1), x + 6, y + 20);
    });
  }

  film.querySelector('.film-bar').addEventListener('click', function (e) {
    var button = e.target.closest('button');
    if (!button) return;
    var act = button.dataset.film;
    if (act === 'close') { film.hidden = true; filmToken += 1; }
    else if (act === 'prev') { filmPage -= 1; drawFilm(); }
    else if (act === 'next') { filmPage += 1; drawFilm(); }
    else if (act === 'save') offer(sheet, fileStem() + '-film-' + (filmPage + 1) + '.jpg', 'image/jpeg');
  });
  film.querySelector('.film-layout').addEventListener('change', function () { filmPage = 0; drawFilm(); });

  return { open: openFilm, save: saveView };
};

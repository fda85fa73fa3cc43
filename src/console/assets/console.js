// The hookgate console's one script. Everything works without it except what it adds:
// copy buttons, a confirmation before deleting, and new rows on the Events page as
// events arrive (the admin API's live stream, read through /live).
(function () {
  'use strict';

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement('textarea');
      area.value = text;
      area.setAttribute('readonly', '');
      area.className = 'visually-hidden';
      document.body.appendChild(area);
      area.select();
      var done = false;
      try { done = document.execCommand('copy'); } catch (e) { done = false; }
      document.body.removeChild(area);
      if (done) { resolve(); } else { reject(new Error('copy refused')); }
    });
  }

  function say(button, text) {
    var label = button.getAttribute('data-label') || button.textContent;
    button.setAttribute('data-label', label);
    button.textContent = text;
    setTimeout(function () { button.textContent = label; }, 1500);
  }

  document.querySelectorAll('button[data-copy]').forEach(function (button) {
    var target = document.getElementById(button.getAttribute('data-copy'));
    if (!target) { return; }
    button.hidden = false;
    button.addEventListener('click', function () {
      var text = target.tagName === 'INPUT' ? target.value : target.textContent;
      copyText(text).then(function () { say(button, 'Copied'); }, function () {
        if (target.select) { target.select(); }
        say(button, 'Press Ctrl+C');
      });
    });
  });

  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      if (!window.confirm(form.getAttribute('data-confirm'))) { event.preventDefault(); }
    });
  });

  // At most this many rows are kept on the page; older ones are one click away.
  var MAX_ROWS = 500;

  function cell(row, label, content) {
    var td = document.createElement('td');
    td.setAttribute('data-label', label);
    if (typeof content === 'string') { td.textContent = content; } else { td.appendChild(content); }
    row.appendChild(td);
  }

  function shortTime(rfc3339) {
    return (rfc3339 || '').slice(0, 19).replace('T', ' ');
  }

  function rowFor(summary) {
    var row = document.createElement('tr');
    var seq = String(summary.seq);
    row.setAttribute('data-seq', seq);
    row.className = 'arrived';
    var link = document.createElement('a');
    link.href = '/events/' + encodeURIComponent(seq);
    link.textContent = seq;
    cell(row, 'Seq', link);
    var time = document.createElement('time');
    time.setAttribute('datetime', summary.received_at || '');
    time.textContent = shortTime(summary.received_at);
    cell(row, 'Received', time);
    cell(row, 'Source', String(summary.source || ''));
    cell(row, 'Type', summary.type == null ? '' : String(summary.type));
    var status = document.createElement('span');
    status.className = 'status status-' + String(summary.status || '').replace(/[^a-z_]/g, '');
    status.textContent = String(summary.status || '');
    cell(row, 'Status', status);
    cell(row, 'Attempts', String(summary.attempts || 0));
    return row;
  }

  // One SSE event block: its `event`, `id` and `data` lines.
  function parseBlock(block) {
    var parsed = { event: 'message', id: null, data: [] };
    block.split(/\r?\n/).forEach(function (line) {
      if (line === '' || line.charAt(0) === ':') { return; }
      var colon = line.indexOf(':');
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') { parsed.event = value; }
      else if (field === 'id') { parsed.id = value; }
      else if (field === 'data') { parsed.data.push(value); }
    });
    parsed.data = parsed.data.join('\n');
    return parsed;
  }

  function live(table) {
    var url = new URL(table.getAttribute('data-live'), window.location.href);
    var wanted = table.getAttribute('data-status') || '';
    var tbody = table.tBodies[0];
    var note = document.getElementById('live-note');
    var empty = document.getElementById('events-empty');
    var after = url.searchParams.get('after') || '0';
    var seen = {};
    var arrived = 0;
    var delay = 1000;
    var stopped = false;
    Array.prototype.forEach.call(tbody.rows, function (row) { seen[row.getAttribute('data-seq')] = true; });

    function show(text) { if (note) { note.textContent = text; } }

    function take(block) {
      var e = parseBlock(block);
      if (e.event === 'overflow') {
        // Too far behind: the stream ends, naming where to resume.
        try {
          var resume = JSON.parse(e.data).resume_after;
          if (typeof resume === 'number') { after = String(resume); }
        } catch (err) { /* resume from the last id */ }
        return;
      }
      // The first frame names only where the stream starts.
      if (e.id) { after = e.id; }
      if (!e.data) { return; }
      var summary;
      try { summary = JSON.parse(e.data); } catch (err) { return; }
      if (wanted && summary.status !== wanted) { return; }
      if (seen[summary.seq]) { return; }
      seen[summary.seq] = true;
      tbody.insertBefore(rowFor(summary), tbody.firstChild);
      while (tbody.rows.length > MAX_ROWS) { tbody.deleteRow(tbody.rows.length - 1); }
      if (empty) { empty.hidden = true; }
      arrived += 1;
      show('Live: ' + arrived + (arrived === 1 ? ' new event' : ' new events') + ' since this page was loaded.');
    }

    function connect() {
      url.searchParams.set('after', after);
      fetch(url.toString(), { credentials: 'same-origin', headers: { Accept: 'text/event-stream' } })
        .then(function (response) {
          var type = response.headers.get('content-type') || '';
          if (response.redirected || response.status === 401) {
            stopped = true;
            show('Signed out: reload the page to see new events.');
            return null;
          }
          if (!response.ok || !response.body || type.indexOf('text/event-stream') !== 0) {
            throw new Error('no stream: ' + response.status);
          }
          delay = 1000;
          if (!arrived) { show('Live: new events appear at the top as they arrive.'); }
          table.setAttribute('data-connected', 'true');
          var reader = response.body.getReader();
          var decoder = new TextDecoder();
          var buffer = '';
          function pump() {
            return reader.read().then(function (chunk) {
              if (chunk.done) { throw new Error('the stream ended'); }
              buffer += decoder.decode(chunk.value, { stream: true });
              var end = buffer.search(/\r?\n\r?\n/);
              while (end >= 0) {
                var block = buffer.slice(0, end);
                buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
                take(block);
                end = buffer.search(/\r?\n\r?\n/);
              }
              return pump();
            });
          }
          return pump();
        })
        .catch(function () {
          table.setAttribute('data-connected', 'false');
          if (stopped) { return; }
          show('Live updates paused; trying again…');
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, 30000);
        });
    }
    connect();
  }

  var table = document.querySelector('table[data-live]');
  if (table && window.fetch && window.TextDecoder && window.URL) { live(table); }
}());

// Live status/progress/ETA on the runs list and run page: polls /api/runs/live every 3 s while anything is active; confirm dialogs.
document.addEventListener('submit', e => { const m = e.target.dataset.confirm; if (m && !confirm(m)) e.preventDefault(); });
(function () {
  const rows = () => [...document.querySelectorAll('[data-run][data-active="1"]')];
  async function poll() {
    const r = rows(); if (!r.length) return;
    const ids = [...new Set(r.map(x => x.dataset.run))].join(',');
    try {
      const res = await fetch('/api/runs/live?ids=' + ids, { credentials: 'same-origin' });
      if (!res.ok) return;
      for (const run of await res.json()) {
        for (const el of document.querySelectorAll('[data-run="' + run.id + '"]')) {
          const set = (sel, html) => { const c = el.querySelector(sel); if (c) c.innerHTML = html; };
          set('.c-status', '<span class="st st-' + run.status.toLowerCase() + '">' + run.status + '</span>');
          set('.c-progress', run.progress_html);
          set('.c-eta', run.eta);
          set('.c-message', run.progress_message ? run.progress_message.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])) : '');
          if (run.terminal) { el.dataset.active = '0'; if (el.dataset.reload === '1') location.reload(); }
        }
      }
    } catch (e) { }
  }
  setInterval(poll, 3000);
})();
// /compare/images: the K slider shows one K column at a time (without JS all of them show)
(function () {
  const s = document.getElementById('k-slider'); if (!s) return;
  const ks = s.dataset.ks.split(',');
  const show = () => {
    const k = ks[+s.value]; document.getElementById('k-value').textContent = k;
    for (const el of document.querySelectorAll('#recon-grid [data-k]')) el.hidden = el.dataset.k !== k;
  };
  s.addEventListener('input', show); show();
})();

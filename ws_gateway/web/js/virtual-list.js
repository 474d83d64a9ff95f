// A virtualized list of items of varying height: only the items near the viewport are in the
// DOM. Heights are estimated until an item has been rendered and measured. While the view is
// scrolled to the bottom it follows new content (a live turn).

const OVERSCAN_PX = 800;

export class VirtualList {
  // items: an array the caller appends to / changes; each item has a unique `key` and a
  // `version` it bumps on change. render(item) → node; update(node, item) patches a node.
  constructor(viewport, { render, update, estimate }) {
    this.viewport = viewport;
    this.renderItem = render;
    this.updateItem = update;
    this.estimate = estimate;
    this.sizer = document.createElement('div');
    this.sizer.className = 'vl-sizer';
    viewport.replaceChildren(this.sizer);
    this.items = [];
    this.heights = [];
    this.tops = [0];
    this.dirtyFrom = 0;
    this.mounted = new Map(); // key → {node, version, index}
    this.follow = true;
    this.queued = false;
    this.resizes = new ResizeObserver(() => this.schedule());
    viewport.addEventListener('scroll', () => {
      this.follow = viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - 8;
      this.schedule();
    }, { passive: true });
  }

  setItems(items) {
    for (const { node } of this.mounted.values()) this.unmount(node);
    this.mounted.clear();
    this.items = items;
    this.heights = [];
    this.dirtyFrom = 0;
    this.follow = true;
    this.schedule();
  }

  // Item i (and what follows) may have changed size or content.
  changed(index = this.items.length - 1) {
    this.dirtyFrom = Math.min(this.dirtyFrom, Math.max(0, index));
    this.schedule();
  }

  schedule() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.render();
    });
  }

  height(index) {
    const h = this.heights[index];
    return h === undefined ? this.estimate(this.items[index]) : h;
  }

  layout() {
    const n = this.items.length;
    const tops = this.tops;
    for (let i = this.dirtyFrom; i < n; i++) tops[i + 1] = tops[i] + this.height(i);
    tops.length = n + 1;
    this.dirtyFrom = n;
    this.sizer.style.height = `${tops[n]}px`;
  }

  // The first index whose bottom is below y.
  indexAt(y) {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.tops[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  render() {
    this.layout();
    if (this.follow) this.viewport.scrollTop = this.tops[this.items.length];
    const top = this.viewport.scrollTop - OVERSCAN_PX;
    const bottom = this.viewport.scrollTop + this.viewport.clientHeight + OVERSCAN_PX;
    const wanted = new Set();
    const placed = [];
    for (let i = this.indexAt(top); i < this.items.length && this.tops[i] < bottom; i++) {
      const item = this.items[i];
      wanted.add(item.key);
      let entry = this.mounted.get(item.key);
      if (!entry) {
        // A wrapper positions the item, so an item's own box model stays its own.
        const node = document.createElement('div');
        node.className = 'vl-item';
        node.append(this.renderItem(item));
        this.sizer.append(node);
        this.resizes.observe(node);
        entry = { node, version: item.version };
        this.mounted.set(item.key, entry);
      } else if (entry.version !== item.version) {
        this.updateItem(entry.node.firstChild, item);
        entry.version = item.version;
      }
      entry.index = i;
      placed.push(entry);
    }
    for (const [key, entry] of this.mounted) {
      if (!wanted.has(key)) {
        this.unmount(entry.node);
        this.mounted.delete(key);
      }
    }
    // Measure what is mounted, then place it (one layout read, then writes).
    let moved = false;
    for (const entry of placed) {
      const h = entry.node.offsetHeight;
      if (this.heights[entry.index] !== h) {
        this.heights[entry.index] = h;
        this.dirtyFrom = Math.min(this.dirtyFrom, entry.index);
        moved = true;
      }
    }
    if (moved) this.layout();
    for (const entry of placed) entry.node.style.transform = `translateY(${this.tops[entry.index]}px)`;
    if (this.follow) this.viewport.scrollTop = this.tops[this.items.length];
  }

  unmount(node) {
    this.resizes.unobserve(node);
    node.remove();
  }

  scrollToIndex(index) {
    this.layout();
    this.follow = false;
    this.viewport.scrollTop = this.tops[Math.max(0, Math.min(index, this.items.length))];
    this.schedule();
  }
}

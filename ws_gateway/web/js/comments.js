// Review comments in a rendered diff: which line a number cell of diff2html's tables shows,
// rows inserted under a line (a comment, the comment form) that keep the two halves of the
// side-by-side view aligned, and how a comment reads. Comment text is text, never markup.

import { el } from './dom.js';

const NUMBER_CELLS = '.d2h-code-linenumber, .d2h-code-side-linenumber';

// {side, line} of a line-number cell, or null (a hunk header, an empty side).
export function lineOf(cell) {
  if (!cell || cell.classList.contains('d2h-info')) return null;
  if (cell.classList.contains('d2h-code-linenumber')) {
    // Unified: the old and the new number; a line the change kept or added is on the new side.
    const next = cell.querySelector('.line-num2')?.textContent.trim();
    const prev = cell.querySelector('.line-num1')?.textContent.trim();
    if (next) return { side: 'new', line: Number(next) };
    return prev ? { side: 'old', line: Number(prev) } : null;
  }
  const number = cell.textContent.trim();
  if (!number) return null;
  const halves = cell.closest('.d2h-files-diff')?.querySelectorAll('.d2h-file-side-diff') || [];
  return { side: halves[0] && halves[0].contains(cell) ? 'old' : 'new', line: Number(number) };
}

export function numberCell(target) {
  return target.closest(NUMBER_CELLS);
}

// The row of a rendered file that shows `line` of `side`, or null.
export function rowOf(body, side, line) {
  for (const cell of body.querySelectorAll(NUMBER_CELLS)) {
    const at = lineOf(cell);
    if (at && at.side === side && at.line === line) return cell.closest('tr');
  }
  return null;
}

// The row at the same place in the other half of a side-by-side view.
function twin(row) {
  const half = row.closest('.d2h-file-side-diff');
  if (!half) return null;
  const other = [...half.parentNode.querySelectorAll('.d2h-file-side-diff')].find((h) => h !== half);
  const index = [...row.parentNode.children].indexOf(row);
  return other ? other.querySelector('tbody').children[index] || null : null;
}

// `content` as a full-width row under `row` (removeRow takes it out again).
export function insertRowAfter(row, content, cls) {
  const added = el('tr', { cls }, [el('td', { attrs: { colspan: row.children.length } }, [content])]);
  row.after(added);
  const pair = twin(row);
  if (pair) {
    const spacer = el('tr', { cls: 'spacer-row' }, [el('td', { attrs: { colspan: pair.children.length } })]);
    pair.after(spacer);
    added.spacer = spacer;
    requestAnimationFrame(() => { spacer.style.height = `${added.offsetHeight}px`; });
  }
  return added;
}

export function removeRow(row) {
  if (row.spacer) row.spacer.remove();
  row.remove();
}

export function where(comment) {
  if (!comment.path) return 'the whole change';
  const line = comment.current_line ?? comment.line;
  return `${comment.path}:${line}${comment.side === 'old' ? ' (old side)' : ''}`;
}

export function commentNode(comment) {
  return el('div', { cls: 'comment', attrs: { 'data-comment-id': comment.comment_id } }, [
    el('div', { cls: 'comment-head' }, [
      el('span', { cls: 'who', text: comment.author }),
      el('span', { cls: 'meta', text: where(comment) }),
      comment.outdated ? el('span', { cls: 'badge outdated', text: comment.current_line ? 'outdated: line moved' : 'outdated' }) : null,
      el('span', { cls: `badge state-${comment.state === 'sent' ? 'sent' : 'open'}`, text: comment.state === 'sent' ? `sent in task #${comment.task_id}` : 'open' }),
    ]),
    el('div', { cls: 'comment-body', text: comment.body }),
  ]);
}

// A small form: its text, Comment and Cancel. onSubmit(text) may throw a RequestError.
export function commentForm(label, { onSubmit, onCancel }) {
  const text = el('textarea', { cls: 'comment-text', attrs: { rows: 3, 'aria-label': label, placeholder: label, required: true } });
  const error = el('p', { cls: 'error', attrs: { role: 'alert' } });
  const form = el('form', {
    cls: 'comment-form', attrs: { method: 'post', action: '#' },
    on: {
      submit: async (event) => {
        event.preventDefault();
        if (!text.value.trim()) return;
        error.textContent = '';
        try {
          await onSubmit(text.value);
          text.value = '';
        } catch (failure) {
          error.textContent = `${failure.code || 'error'}: ${failure.message}`;
        }
      },
    },
  }, [
    text,
    el('div', { cls: 'comment-actions' }, [
      el('button', { cls: 'comment-submit', text: 'Comment', attrs: { type: 'submit' } }),
      onCancel ? el('button', { text: 'Cancel', attrs: { type: 'button' }, on: { click: onCancel } }) : null,
    ]),
    error,
  ]);
  form.text = text;
  return form;
}

// highlight.js, loaded from the gateway (/vendor): the core once, each language when a file
// of it is first shown. Only languages named in this table are ever requested.

const LANGUAGES = {
  py: 'python', pyi: 'python', js: 'javascript', mjs: 'javascript', cjs: 'javascript', jsx: 'javascript',
  ts: 'typescript', tsx: 'typescript', json: 'json', css: 'css', scss: 'scss', less: 'less',
  html: 'xml', htm: 'xml', xml: 'xml', svg: 'xml', md: 'markdown', sh: 'bash', bash: 'bash', zsh: 'bash',
  go: 'go', rs: 'rust', java: 'java', c: 'c', h: 'c', cc: 'cpp', cpp: 'cpp', cxx: 'cpp', hpp: 'cpp',
  cs: 'csharp', rb: 'ruby', php: 'php', yml: 'yaml', yaml: 'yaml', toml: 'ini', ini: 'ini', cfg: 'ini',
  sql: 'sql', kt: 'kotlin', kts: 'kotlin', swift: 'swift', lua: 'lua', pl: 'perl', r: 'r', dart: 'dart',
  scala: 'scala', hs: 'haskell', ex: 'elixir', exs: 'elixir', erl: 'erlang', ml: 'ocaml', clj: 'clojure',
  nix: 'nix', proto: 'protobuf', graphql: 'graphql', vim: 'vim', ps1: 'powershell', diff: 'diff',
  patch: 'diff', mk: 'makefile',
};
const FILE_NAMES = { makefile: 'makefile', dockerfile: 'dockerfile', gnumakefile: 'makefile' };

let core = null;
const loading = new Map();

export function extension(path) {
  const name = path.slice(path.lastIndexOf('/') + 1).toLowerCase();
  const dot = name.lastIndexOf('.');
  return dot > 0 ? name.slice(dot + 1) : name;
}

export function languageFor(path) {
  const name = path.slice(path.lastIndexOf('/') + 1).toLowerCase();
  return FILE_NAMES[name] || LANGUAGES[extension(path)] || 'plaintext';
}

async function load(name) {
  const module = await import(`/vendor/highlight.js/languages/${name}.js`);
  core.registerLanguage(name, module.default);
}

// The highlighter with `name` registered (plaintext when it cannot be loaded).
export async function highlighter(name) {
  if (core === null) {
    core = (await import('/vendor/highlight.js/core.js')).default;
    await load('plaintext');
  }
  if (!core.getLanguage(name)) {
    if (!loading.has(name)) loading.set(name, load(name).catch(() => {}));
    await loading.get(name);
  }
  return core;
}

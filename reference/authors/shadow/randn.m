function varargout = randn(varargin)
% Logs every draw of the built-in randn (seed and state calls pass through) so that
% deepbof's tests can replay the same numbers. Part of deepbof's reference driver.
global DEEPBOF_DRAWS
if nargin > 0 && ischar(varargin{1})
  [varargout{1:nargout}] = builtin('randn', varargin{:});
  return
end
r = builtin('randn', varargin{:});
DEEPBOF_DRAWS{end + 1} = struct('kind', 'randn', 'value', r);
varargout{1} = r;
end
